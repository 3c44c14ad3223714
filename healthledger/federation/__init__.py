"""Hospitals as one network: the member directory, cross-hospital tokens, record locators, fetching."""
