"""Secrets never written: the password of a URL (`postgresql://user:***@host/db`) and the value of a
key named like a secret (`password`, `api_key`, `token`, ...) become `***` in everything a run or a
search writes (config.yaml, log.txt, search.yaml, a tracker's params) and prints. The real value is
used to connect and kept in memory only.

A config read back from a folder therefore holds `***` where a secret was: `masked_keys` finds
those values, so that a rerun or `--resume` can ask for the secret again instead of connecting with
`***` (docs/loggers.md, "Secrets"). Pure functions; imports only lightyaml.errors.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from lightyaml.errors import ConfigError

MASK = '***'

# Words that make a key a secret, matched against the key's words (split at `_`, `-`, `.` and
# camelCase), so that `api_token`, `apiKey` and `DB_PASSWORD` are secrets but `tokenizer` or
# `max_tokens` are not.
_SECRET_WORDS = {'password', 'passwd', 'pwd', 'passphrase', 'token', 'secret', 'secrets', 'credential',
                 'credentials', 'apikey', 'accesskey', 'privatekey', 'secretkey'}
_SECRET_PAIRS = {('api', 'key'), ('access', 'key'), ('private', 'key'), ('secret', 'key'), ('auth', 'key')}
# `scheme://user:password@`: the password is what lies between the user's `:` and the last `@`
# before the host (a password may hold `@`).
_URL_PASSWORD = re.compile(r'([a-zA-Z][\w+.\-]*://[^\s:/@\'"]*):([^\s/\'"]*)@(?=[^\s@/\'"]*(?:[/?#\s\'"]|$))')
# `password=...` or `api_key: ...` inside free text (an override's YAML value, an error line).
_SECRET_KEY_VALUE = re.compile(r'(?P<key>[\w\-]+)(?P<sep>[\'"]?\s*[:=]\s*)'
                               r'(?P<value>"[^"]*"|\'[^\']*\'|[^\s,{}\[\]\'"]+)')


def is_secret_key(key: Any) -> bool:
    """Whether a config key names a secret: one of its words is `password`, `token`, `secret`, ...
    or two neighbouring words are `api key`, `access key`, `private key`."""
    words = [w.lower() for w in re.split(r'[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])', str(key)) if w]
    return any(w in _SECRET_WORDS for w in words) or any(pair in _SECRET_PAIRS for pair in zip(words, words[1:]))


def mask_url(url: str) -> str:
    """`url` with the password of each `scheme://user:password@host` in it written `***`."""
    return _URL_PASSWORD.sub(rf'\g<1>:{MASK}@', url)


def drop_password(url: str) -> str:
    """`url` without the password of its `user:password@`: the database client then takes it from
    its own setting (PostgreSQL: PGPASSWORD or ~/.pgpass), e.g. in a generated SLURM script."""
    return _URL_PASSWORD.sub(r'\g<1>@', url)


def mask_text(text: str) -> str:
    """Free text (a command line, an error message) with URL passwords and the values of
    secret-named `key=value` / `key: value` pairs written `***`."""
    def value(match: re.Match) -> str:
        if not is_secret_key(match['key']) or match['value'] in (MASK, 'null', '~', "''", '""'):
            return match[0]
        return f"{match['key']}{match['sep']}{MASK}"
    return _SECRET_KEY_VALUE.sub(value, mask_url(text))


def mask_secrets(config: Any) -> Any:
    """A deep copy of `config` with every value under a secret-named key `***` (empty values and
    booleans kept: they hide nothing) and every URL password masked."""
    if isinstance(config, Mapping):
        return {k: _mask_all(v) if is_secret_key(k) else mask_secrets(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [mask_secrets(v) for v in config]
    return mask_url(config) if isinstance(config, str) else config


def _mask_all(value: Any) -> Any:
    """Everything below a secret-named key."""
    if isinstance(value, Mapping):
        return {k: _mask_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask_all(v) for v in value]
    return value if value is None or value == '' or isinstance(value, bool) else MASK


def mask_command(argv: Sequence[str]) -> list[str]:
    """A command line as it may be written or printed: URL passwords masked (`--storage URL`,
    URLs in overrides), and so are overrides of a secret-named key (`loggers.0.args.tags.api_token=x`)
    and secret-named keys inside an override's YAML value (`tags={api_token: x}`)."""
    masked = []
    for arg in argv:
        key, sep, value = arg.partition('=')
        if sep and not key.startswith('-') and any(is_secret_key(part) for part in key.split('.')) and value:
            masked.append(f'{key}={MASK}')
        else:
            masked.append(mask_text(arg) if sep or '://' in arg else arg)
    return masked


def masked_keys(config: Any, prefix: str = '') -> list[str]:
    """The key paths of `config` that hold a masked secret (`***` under a secret-named key, or a
    URL whose password is `***`): a config read back from an experiment folder."""
    if isinstance(config, Mapping):
        return [key for k, v in config.items()
                for key in ([f'{prefix}{k}'] if is_secret_key(k) and _holds_mask(v) else
                            masked_keys(v, f'{prefix}{k}.'))]
    if isinstance(config, list):
        return [key for i, v in enumerate(config) for key in masked_keys(v, f'{prefix}{i}.')]
    return [prefix[:-1]] if isinstance(config, str) and f':{MASK}@' in config and mask_url(config) == config else []


def _holds_mask(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_holds_mask(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_mask(v) for v in value)
    return value == MASK or (isinstance(value, str) and f':{MASK}@' in value)


def check_no_masked_secrets(cfg: Mapping) -> None:
    """Refuse a config that holds a masked secret (a config.yaml read back for a rerun or a
    `--resume`): connecting with `***` would fail later, or quietly log nowhere. One line per key,
    saying how to give the secret again."""
    where = getattr(cfg, 'error', lambda key, problem: f'{key}: {problem}')
    problems = [where(key, f'holds a masked secret (***: experiment folders never store secrets); give it again '
                           f'as an override of {key}, or set it to null to let the library read it from the '
                           f'environment (e.g. MLFLOW_TRACKING_URI)') for key in masked_keys(cfg)]
    if problems:
        raise ConfigError(*problems)
