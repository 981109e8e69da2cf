"""`check-config` output: every setting as an env line, secrets masked, a mappings summary."""

from __future__ import annotations

import re

import pytest
from pydantic import SecretStr

from service.config_report import render_config
from settings import (
    AdminSettings,
    MongoSettings,
    SalesforceSettings,
    Settings,
    SyncSettings,
    parse_mappings,
)

MAPPINGS = """
[people.first_name]
lead = "FirstName"
contact = "FirstName"
direction = "to_salesforce"
[people.owner_crm_id]
lead = "OwnerId"
contact = "OwnerId"
[companies.name]
account = "Name"
[[users]]
local = "u-1"
salesforce = "005000000000001AAA"
"""


def settings(**sections: object) -> Settings:
    return Settings(_env_file=None, **sections)  # type: ignore[arg-type, call-arg]


class TestSettingsLines:
    def test_every_variable_is_listed_once(self) -> None:
        """Each leaf setting appears as one SFSYNC_ line with its effective value."""
        text = render_config(settings(), None)
        variables = re.findall(r"^(SFSYNC_[A-Z_]+)=", text, flags=re.MULTILINE)
        assert len(variables) == len(set(variables)) == sum(
            len(type(getattr(settings(), s)).model_fields) for s in Settings.model_fields
        )
        assert "SFSYNC_SYNC__OBJECTS=Lead,Contact,Account\n" in text
        assert "SFSYNC_BUDGET__POLL_BELOW_PCT=25\n" in text
        assert "SFSYNC_SALESFORCE__AUTH_FLOW=jwt_bearer\n" in text
        assert "SFSYNC_ADMIN__TOKEN=\n" in text

    @pytest.mark.parametrize(
        ("sections", "line", "hidden"),
        [
            ({"salesforce": SalesforceSettings(client_secret=SecretStr("cs-1234"))},
             "SFSYNC_SALESFORCE__CLIENT_SECRET=***", "cs-1234"),
            ({"salesforce": SalesforceSettings(refresh_token=SecretStr("rt-1234"))},
             "SFSYNC_SALESFORCE__REFRESH_TOKEN=***", "rt-1234"),
            ({"admin": AdminSettings(token=SecretStr("adm-1234"))}, "SFSYNC_ADMIN__TOKEN=***", "adm-1234"),
            ({"mongodb": MongoSettings(uri=SecretStr("mongodb://sync:pw-1234@db1:27017/?replicaSet=rs0"))},
             "SFSYNC_MONGODB__URI=mongodb://sync:***@db1:27017/?replicaSet=rs0", "pw-1234"),
            ({"mongodb": MongoSettings(uri=SecretStr(
                "mongodb://db1/?tls=true&tlsCertificateKeyFilePassword=kfp-99&replicaSet=rs0"))},
             "SFSYNC_MONGODB__URI=mongodb://db1/?tls=true&tlsCertificateKeyFilePassword=***&replicaSet=rs0",
             "kfp-99"),
            ({"mongodb": MongoSettings(uri=SecretStr(
                "mongodb://db1/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tk9"))},
             "SFSYNC_MONGODB__URI=mongodb://db1/?authMechanism=MONGODB-AWS&authMechanismProperties=***",
             "tk9"),
        ],
    )
    def test_secrets_are_masked(self, sections: dict[str, object], line: str, hidden: str) -> None:
        """Secrets print as ***; a MongoDB URI keeps its host but hides its password."""
        text = render_config(settings(**sections), None)
        assert line + "\n" in text
        assert hidden not in text

    def test_uri_without_credentials_is_shown(self) -> None:
        """A URI with nothing secret in it is shown whole."""
        text = render_config(settings(), None)
        assert "SFSYNC_MONGODB__URI=mongodb://localhost:27017\n" in text

    def test_non_default_values(self) -> None:
        """Effective values are shown, not defaults."""
        text = render_config(settings(sync=SyncSettings(objects=["Lead"], frequency_minutes=5)), None)
        assert "SFSYNC_SYNC__OBJECTS=Lead\n" in text
        assert "SFSYNC_SYNC__FREQUENCY_MINUTES=5\n" in text


class TestMappingsSummary:
    def test_summary(self) -> None:
        """Counts, each mapped field per object with direction and merge, rules, importability."""
        text = render_config(settings(), parse_mappings(MAPPINGS))
        assert "# mappings: 2 people field(s), 1 company field(s), 1 user link(s)" in text
        assert "#   people.first_name <-> Lead.FirstName (to_salesforce, most_recent)" in text
        assert "#   people.first_name <-> Contact.FirstName (to_salesforce, most_recent)" in text
        assert "#   companies.name <-> Account.Name (both, most_recent)" in text
        assert "create_in_salesforce=lead" in text
        assert "# accounts importable: no (map companies.name and companies.domain)" in text

    def test_without_mappings(self) -> None:
        """When the mappings could not be loaded, the report says so."""
        assert render_config(settings(), None).endswith("# mappings: not loaded\n")
