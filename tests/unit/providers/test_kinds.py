"""One registry of provider kinds: the config's `ProviderKind` names exactly the kinds
`server.providers.KINDS` builds, so a kind added to one only fails here."""

from __future__ import annotations

from typing import get_args

from server.config import DEFAULT_BASE_URLS, ProviderConfig, ProviderKind
from server.providers import KINDS


def test_every_configurable_kind_is_built_and_every_built_kind_configurable() -> None:
    assert set(get_args(ProviderKind)) == set(KINDS)


def test_the_config_field_takes_the_registrys_kinds() -> None:
    assert set(get_args(ProviderConfig.model_fields["kind"].annotation)) == set(KINDS)


def test_default_base_urls_name_registered_kinds_only() -> None:
    assert set(DEFAULT_BASE_URLS) <= set(KINDS)
