"""FHIR R4 resources in plain words for people who are not clinicians: a patient's record, Consents, the
access log. Pure; the web app renders what these return."""
