"""The people-facing web app under /app.

- `sessions`: the session secret, the server-side session record and its lifetime, sign-in and sign-out,
  the CSRF rule, and the signed-in principal of a request (also used by the API for cookie requests);
- `models`: the `web_sessions` table;
- `pages`: the /app blueprint that every page blueprint is registered on (shared headers, error page);
- `account`: the sign-in form, sign-in, sign-out and the home page;
- `templates/`: their Jinja templates, all extending `base.html`.
"""
