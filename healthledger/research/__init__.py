"""Research: studies, eligibility credentials (the hospital as issuer) and enrolment by zero-knowledge proof."""
