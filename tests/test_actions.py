"""The access vocabulary is spelled once (healthledger/actions.py): every mapping of actions covers it exactly."""

from __future__ import annotations

import pytest

from healthledger.actions import ACTIONS, LOGGED_ACTIONS, READ_ACTIONS, WRITE_ACTIONS
from healthledger.audit.entries import AccessEntry
from healthledger.auth.scopes import INTERACTION_PERMISSION
from healthledger.consent.engine import CONSENT_ACTION


def test_every_mapping_covers_the_vocabulary() -> None:
    assert set(CONSENT_ACTION) == ACTIONS
    assert set(INTERACTION_PERMISSION) == ACTIONS
    assert {CONSENT_ACTION[a] for a in WRITE_ACTIONS} <= {"collect", "correct"}
    assert {INTERACTION_PERMISSION[a] for a in READ_ACTIONS} <= {"r", "s"}


def test_the_log_takes_every_action_and_nothing_else() -> None:
    from datetime import UTC, datetime

    for action in LOGGED_ACTIONS:
        AccessEntry(time=datetime.now(UTC), actor="a", organization="", role="system", purpose="TREAT",
                    action=action, resource_type="Patient", resource_id="", patient_pseudonym="",
                    decision="permit", reason="")
    with pytest.raises(ValueError, match="unknown action"):
        AccessEntry(time=datetime.now(UTC), actor="a", organization="", role="system", purpose="TREAT",
                    action="patch", resource_type="Patient", resource_id="", patient_pseudonym="",
                    decision="permit", reason="")
