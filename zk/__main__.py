"""`python -m zk`: the `zk` command group without the HealthLedger service."""

from zk.cli import main

main()
