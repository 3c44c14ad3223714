"""The people-facing web app under /app: server-rendered Jinja pages with a little JavaScript of our own.

Every page reads and writes patient data through the /fhir API as the signed-in person (`fhir_client`):
the same authentication, scopes, consent decisions and access-log entries as any other client.

- `sessions`: the session secret, the server-side session record and its lifetime, sign-in and sign-out,
  the CSRF rule, and the signed-in principal of a request (also used by the API for cookie requests);
- `models`: the `web_sessions` table;
- `pages`: the /app blueprint that every page blueprint is registered on (shared headers, CSP, layout);
- `context`: who is signed in (or the way to sign-in), the navigation, static file URLs;
- `fhir_client`: the pages' in-process client of the /fhir API, with the browser's session;
- `forms`: the forms and their messages; `directory`: names of the organisations and people a page mentions;
- `account`: sign in and out, home, a new password; `enrolment`: sign-up with an enrolment code, recovery;
- `records`: my records (and the download); `consents`: who can see my data, requests; `sharing`: share
  my data; `history` (+ `access_log`): the access history with in-page proof verification; `notices`;
- `templates/`, `static/`: Jinja templates (all extending `base.html`), CSS and JavaScript.
"""
