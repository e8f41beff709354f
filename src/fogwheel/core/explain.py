"""The coordinator's refusals as a command-line user should read them: what was wrong, and the
option or action that fixes it.

The coordinator answers in the API's terms (a key kind, a field path, a validation rule); the
CLI speaks in flags. `explain_refusal(status, message)` turns one into the other: a 401 or 403
names the key the endpoint takes and the flag that gives it, a 404 for a path the API does not
have says the coordinator URL is the base, and a 422 becomes a sentence that names the field
and the form it takes, with no regular expression or validator wording. A message it does not
recognise passes through unchanged: the coordinator's own sentences already say what to do.
"""

from __future__ import annotations

import re

# What each kind of principal is called, and how a command-line user gives it.
KEY_FLAGS: dict[str, tuple[str, str]] = {
    "customer": ("a customer API key", "--api-key / FOGWHEEL_API_KEY"),
    "admin": ("the admin key", "--admin-key / FOGWHEEL_ADMIN_KEY"),
    "owner": ("an owner key", "--owner-key / FOGWHEEL_OWNER_KEY"),
    "node": (
        "a node credential",
        "the node.json in the node's --data-dir; a revoked device joins again with "
        "`fogwheel node --token`",
    ),
}

# A field the CLI sends, by the last part of its name: what it is and the form it takes.
FIELD_FORMS: dict[str, tuple[str, str]] = {
    "content_id": (
        "the content id",
        "'c' and 24 hex digits, as `fogwheel cdn publish` printed it",
    ),
    "sha": ("the blob's SHA-256", "64 hex digits"),
    "name": ("the name", "1 to 200 characters"),
    "node_id": ("the node id", "as `fogwheel nodes` lists it: letters, digits and . _ : -"),
    "token_id": ("the token id", "as `fogwheel tokens list` shows it: letters, digits and . _ : -"),
    "customer_id": ("the customer id", "c- and hex digits, as `fogwheel keys create` printed it"),
    "owner_id": ("the owner id", "as `fogwheel owners list` shows it: letters, digits and . _ : -"),
    "job_id": ("the job id", "a whole number, as `fogwheel jobs` lists it"),
    "task_id": ("the task id", "a whole number, as `fogwheel jobs ID` lists it"),
    "limit": ("--limit", "a whole number from 1 to 1000"),
    "before": ("--before", "an entry id, a whole number"),
}

_WHERE = ("path", "query", "body", "header", "cookie")
_FIELD = re.compile(r"^(?P<field>[A-Za-z_][\w.]*): (?P<rule>.+)$", re.S)
_KINDS = re.compile(r"takes (?P<kinds>.+?)(?:$|[;(])")
_WRONG_KIND = re.compile(r"is for (?P<wanted>.+) keys, not for an? (?P<given>\w+) key")


def explain_refusal(status: int, message: str) -> str:
    """One sentence for a refusal the coordinator answered with `status` and `message`."""
    if status == 401:
        return _unauthorised(message)
    if status == 403:
        wrong = _WRONG_KIND.search(message)
        if wrong:
            return _wrong_kind(wrong["wanted"], wrong["given"])
    if status == 404 and message.strip().lower() in ("not found", ""):
        return (
            "the coordinator has no such endpoint: the coordinator URL is the base, e.g. "
            "http://127.0.0.1:8470, without /v1 or any other path (check --coordinator / "
            "FOGWHEEL_COORDINATOR)"
        )
    if status == 422:
        sentence = _invalid_field(message)
        if sentence:
            return sentence
    return message


def kinds_named(text: str) -> list[str]:
    """The principal kinds `text` names, in KEY_FLAGS order."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    return [kind for kind in KEY_FLAGS if kind in words]


def _unauthorised(message: str) -> str:
    takes = _KINDS.search(message)
    kinds = kinds_named(takes["kinds"]) if takes else []
    if message.startswith("missing credentials"):
        what = "no key was sent"
    else:
        what = "the coordinator does not know the key given (a wrong key, or one revoked)"
    if not kinds:
        return f"{what}: check the key option of this command (see --help)"
    return f"{what}: this takes {_keys_and_flags(kinds)}"


def _wrong_kind(wanted: str, given: str) -> str:
    kinds = kinds_named(wanted)
    given_name = KEY_FLAGS.get(given, (f"a {given} key", ""))[0]
    if not kinds:
        return f"the coordinator refused {given_name} here: this takes {wanted} keys"
    return f"this takes {_keys_and_flags(kinds)}, and the key given is {given_name}"


def _keys_and_flags(kinds: list[str]) -> str:
    return " or ".join(f"{KEY_FLAGS[k][0]} ({KEY_FLAGS[k][1]})" for k in kinds)


def _invalid_field(message: str) -> str | None:
    match = _FIELD.match(message)
    if not match:
        return None
    parts = [p for p in match["field"].split(".") if p not in _WHERE]
    if not parts:
        return None
    rule = _rule(match["rule"])
    if rule is None:
        return None
    field = parts[-1]
    what, form = FIELD_FORMS.get(field, (f"the field {'.'.join(parts)}", ""))
    if rule == "pattern":
        shape = f": it should be {form}" if form else ""
        return f"{what} is not in the right form{shape}"
    if rule == "missing":
        return f"{what} is missing" + (f": give {form}" if form else "")
    return f"{what} {rule}" + (f" ({form})" if form else "")


# Pydantic's validation messages (pydantic-core's error types), as plain words; None when the
# text is not one of them (then the coordinator wrote its own sentence).
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^String should match pattern"), "pattern"),
    (re.compile(r"^Field required"), "missing"),
    (
        re.compile(r"^String should have at most (\d+) characters?"),
        "is too long: at most {0} characters",
    ),
    (
        re.compile(r"^String should have at least (\d+) characters?"),
        "is too short: at least {0} characters",
    ),
    (re.compile(r"^Input should be a valid integer"), "should be a whole number"),
    (re.compile(r"^Input should be a valid number"), "should be a number"),
    (re.compile(r"^Input should be a valid boolean"), "should be true or false"),
    (re.compile(r"^Input should be a valid string"), "should be text"),
    (re.compile(r"^Input should be greater than or equal to (\S+)"), "should be at least {0}"),
    (re.compile(r"^Input should be greater than (\S+)"), "should be more than {0}"),
    (re.compile(r"^Input should be less than or equal to (\S+)"), "should be at most {0}"),
    (re.compile(r"^Input should be less than (\S+)"), "should be less than {0}"),
    (re.compile(r"^List should have at most (\d+) items?"), "has too many items: at most {0}"),
    (re.compile(r"^List should have at least (\d+) items?"), "has too few items: at least {0}"),
    (re.compile(r"^Extra inputs are not permitted"), "is not a field the coordinator takes"),
    (re.compile(r"^Input should be (.+)$"), "should be {0}"),
    (re.compile(r"^Value error, (.+)$", re.S), "is wrong: {0}"),
]


def _rule(text: str) -> str | None:
    for pattern, words in _RULES:
        m = pattern.match(text)
        if m:
            return words.format(*(g.rstrip(".").replace("'", "") for g in m.groups()))
    return None
