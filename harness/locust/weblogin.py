"""A login page for Locust's web UI when it listens beyond this machine (`--web-login`).

`harness run --web` binds the UI to 127.0.0.1. Bound elsewhere, it turns on Locust's web login and
checks one user name and password: `HARNESS_WEB_USER` (default `harness`) and `HARNESS_WEB_PASSWORD`,
which must be set. The password never leaves this process: it is not in the plan, the manifest or
the command line.
"""

from __future__ import annotations

import hmac
import os
import secrets
from typing import Any

from locust import events
from locust.env import Environment

from harness.webauth import PASSWORD_ENV, USER_ENV

__all__: list[str] = []


@events.init.add_listener
def _setup_login(environment: Environment, **_: Any) -> None:
    web = environment.web_ui
    opts = environment.parsed_options
    if web is None or web.app is None or opts is None or not getattr(opts, "web_login", False):
        return
    app = web.app
    from flask import Blueprint, redirect, request, session, url_for
    from flask_login import UserMixin, login_user

    user = os.environ.get(USER_ENV, "harness")
    password = os.environ.get(PASSWORD_ENV, "")
    base = getattr(opts, "web_base_path", "") or ""

    class _User(UserMixin):
        def __init__(self, name: str) -> None:
            self.name = name

        def get_id(self) -> str:
            return self.name

    web.login_manager.user_loader(lambda name: _User(name) if name == user else None)
    app.config["SECRET_KEY"] = os.environ.get("FLASK_SECRET_KEY") or secrets.token_hex(32)
    web.auth_args = {"username_password_callback": f"{base}/harness-login"}
    bp = Blueprint("harness_login", __name__, url_prefix=base)

    @bp.route("/harness-login", methods=["POST"])
    def login_submit() -> Any:
        given_user = request.form.get("username", "")
        given_password = request.form.get("password", "")
        ok = (
            bool(password)
            and hmac.compare_digest(given_user, user)
            and hmac.compare_digest(given_password, password)
        )
        if ok:
            login_user(_User(user))
            return redirect(url_for("locust.index"))
        session["auth_error"] = "Invalid user name or password"
        return redirect(url_for("locust.login"))

    app.register_blueprint(bp)
