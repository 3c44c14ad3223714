"""The people-facing web app under /app: sign-in sessions and pages."""
