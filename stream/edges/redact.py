"""Secrets out of everything the software shows or writes: one function, ``redact``.

Camera and stream URLs carry credentials in many shapes. Every output path (log lines, error lines,
metric labels, the preview page, the JSONL ``source`` field and output names) passes its text through
``redact``, which replaces each secret with ``***``:

- **user-info**: everything between the scheme and the *last* ``@`` of a URL, so an unescaped ``@``
  in the password is covered (``rtsp://admin:p@ss@cam/x`` -> ``rtsp://***@cam/x``); also with a
  mistyped scheme (``rstp://``, ``rtsp:/``, ``http//``, ``rtsp:``) or none (``admin:pw@10.0.0.2/x``;
  without a scheme, ``name@rest`` is masked when there is a ``:`` before the ``@``, or when ``name`` has
  no ``/`` and ``rest`` is an address with a port or a path, so ``clip@2x.mp4``, ``a@b/c.mp4``'s folder
  and mail addresses stay as they are).
- **sensitive keys**: the value of every ``key=value`` whose key is in ``SENSITIVE_KEYS`` or starts
  with one of ``SENSITIVE_PREFIXES`` (case-insensitive), wherever it stands: query, fragment
  (``#access_token=...``), or DVR-style credentials in the path (``/user=admin&password=x&channel=1``,
  ``;``- or ``_``-separated forms such as ``/user=admin_password=x_channel=1``). ``=`` may be
  percent-encoded (``%3D``).
- **secrets seen before**: every value masked once is remembered (raw, percent-decoded, percent-encoded
  and backslash-escaped), and masked again wherever it turns up later in free text, e.g. an FFmpeg error
  that quotes the URL in another form. Values shorter than ``MIN_REMEMBERED`` characters are not
  remembered (they would mask ordinary words); the URL patterns above still catch them.

Limits (what cannot be told apart): a value is taken to end where the next ``name=`` follows one of
``& ; _ / ? # ,`` (an unescaped ``&name=`` inside a password reads as the next parameter), or at
whitespace; user-info is taken to end at the last ``@`` of the whitespace-free token, so an ``@`` later in
the URL (``?mail=a@b``) masks more than needed, never less; without a scheme, a user name that itself
begins like one (``name://``, ``name//``, ``rtsp:``) is read as the scheme, and quotes, brackets or
slashes in front of it as the text around the URL.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import quote, unquote

MASK = "***"

# Query, fragment and path keys whose values are secrets. Matched whole and case-insensitively.
SENSITIVE_KEYS = frozenset({
    "password", "pass", "passwd", "pwd", "pw", "passphrase", "passcode",
    "user", "username", "usr", "login",
    "token", "access_token", "refresh_token", "id_token", "auth_token", "session_token", "security_token",
    "jwt", "bearer",
    "key", "api_key", "apikey", "api-key", "access_key", "accesskey", "secret_key", "secretkey",
    "private_key", "awsaccesskeyid",
    "secret", "client_secret",
    "auth", "authorization", "credential", "credentials",
    "signature", "sig",
})
# Key prefixes whose every key is sensitive (pre-signed cloud storage URLs: X-Amz-Signature,
# X-Amz-Credential, X-Amz-Security-Token, X-Goog-Signature, ...).
SENSITIVE_PREFIXES = ("x-amz-", "x-goog-")
MIN_REMEMBERED = 4
_MAX_REMEMBERED = 512  # distinct secrets kept for free-text masking (a run has a handful)

# URL schemes recognised with one slash or none (``rtsp:/user:pw@host``, ``rtsp:user:pw@host``); any
# other word counts as a scheme only when two slashes follow it, as in ``rstp://`` or ``http//``.
_KNOWN_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "tcp", "hls", "mms")

_KEY = "|".join(
    [re.escape(prefix) + r"[A-Za-z0-9_-]*" for prefix in SENSITIVE_PREFIXES]
    + [re.escape(key) for key in sorted(SENSITIVE_KEYS, key=len, reverse=True)]
)
_EQUALS = r"(?:=|%3[dD])"
# key=value; the value runs (lazily) up to the next parameter, whitespace or the end of the text.
_KEY_VALUE = re.compile(
    rf"(?<![A-Za-z0-9])(?:{_KEY}){_EQUALS}(?P<value>\S*?)"
    rf"(?=(?:[&;_/?#,]|%26)[A-Za-z][A-Za-z0-9.\-]*{_EQUALS}|\s|$)",
    re.IGNORECASE,
)
_TOKEN_WITH_AT = re.compile(r"\S*@\S*")
_SCHEME_SLASHES = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:?//")
_SCHEME_KNOWN = re.compile(rf"(?:{'|'.join(_KNOWN_SCHEMES)}):/{0,2}", re.IGNORECASE)
_LEAD = re.compile(r"[\"'(\[{<]*/*")
_HOST_LOOKS_NETWORK = re.compile(r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9A-Fa-f:.]+\]|[^/?#:\s]+:\d+)(?:[/?#:]|$)")

_lock = threading.Lock()
_remembered: dict[str, None] = {}  # insertion-ordered set of secrets (and their other spellings)
_variants: tuple[str, ...] = ()  # longest first, for masking in free text


def redact(text: object) -> str:
    """``text`` (a URL, a source spec, a name, a log or error message) with every secret masked."""
    found: list[str] = []
    text = _KEY_VALUE.sub(lambda m: _mask_value(m, found), str(text))
    text = _TOKEN_WITH_AT.sub(lambda m: _mask_userinfo(m.group(0), found), text)
    if found:
        _remember(found)
    # Last: masking remembered secrets first could cut the keys and schemes the patterns look for.
    return _mask_remembered(text)


def _mask_value(match: re.Match, found: list[str]) -> str:
    found.append(match.group("value"))
    start, end = match.span("value")
    whole = match.group(0)
    return whole[: start - match.start()] + MASK + whole[end - match.start():]


def _mask_userinfo(token: str, found: list[str]) -> str:
    """``lead scheme:// userinfo @ rest`` -> ``lead scheme://***@rest`` (rest after the last ``@``)."""
    start, plain = _userinfo_start(token)
    at = token.rfind("@")
    if at < start:
        return token
    userinfo, rest = token[start:at], token[at + 1:]
    if not userinfo or userinfo == MASK:
        return token
    if plain and ":" not in userinfo and ("/" in userinfo or not _looks_like_host(rest)):
        return token  # a file name such as clip@2x.mp4, a folder a@b/, a mail address: no credentials
    found.append(userinfo)
    found.append(userinfo.partition(":")[2])
    return token[:start] + MASK + "@" + rest


def _looks_like_host(rest: str) -> bool:
    """``10.0.0.2/x``, ``cam:554``, ``cam.local/stream``: an address with a port or a path after it."""
    return bool(_HOST_LOOKS_NETWORK.match(rest)) or "/" in rest


def _userinfo_start(token: str) -> tuple[int, bool]:
    """Where the user-info of ``token`` would begin, and whether no scheme precedes it.

    A scheme starts the token (after quotes or brackets): any word followed by ``://`` or ``//``, or a
    known scheme followed by ``:`` and any slashes. Nothing inside the token counts, so a password such as
    ``0A:/x`` is never read as one.
    """
    lead = _LEAD.match(token).end()
    scheme = _SCHEME_SLASHES.match(token, lead) or _SCHEME_KNOWN.match(token, lead)
    if scheme is not None:
        return scheme.end(), False
    return lead, True


def _remember(secrets: list[str]) -> None:
    global _variants
    new = []
    for secret in secrets:
        if len(secret) < MIN_REMEMBERED or MASK in secret:
            continue
        for variant in (secret, unquote(secret), quote(secret, safe=""), quote(secret, safe=":/@"),
                        secret.replace("\\", "\\\\")):
            if len(variant) >= MIN_REMEMBERED and variant not in _remembered:
                new.append(variant)
    if not new:
        return
    with _lock:
        for variant in new:
            _remembered[variant] = None
        while len(_remembered) > _MAX_REMEMBERED:
            del _remembered[next(iter(_remembered))]
        _variants = tuple(sorted(_remembered, key=len, reverse=True))


def _mask_remembered(text: str) -> str:
    for secret in _variants:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
