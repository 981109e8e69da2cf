"""The configuration contract: every SFSYNC_ variable, its default, and one clear line per bad value."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from settings import (
    AuthFlow,
    ConfigError,
    Direction,
    LogFormat,
    MergeBehaviour,
    Settings,
    load_mappings,
    load_settings,
    parse_mappings,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No SFSYNC_ variable from the outer environment, and no stray .env in the working directory."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("SFSYNC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def _get(settings: Settings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _fields(settings: Settings) -> list[tuple[str, str]]:
    """(env variable, dotted attribute) for every leaf field of Settings."""
    out = []
    for section, info in Settings.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name in model.model_fields:
            out.append((f"SFSYNC_{section.upper()}__{name.upper()}", f"{section}.{name}"))
    return out


class TestDefaults:
    @pytest.mark.parametrize(
        ("attribute", "default"),
        [
            ("salesforce.login_url", "https://login.salesforce.com"),
            ("salesforce.auth_flow", AuthFlow.JWT_BEARER),
            ("salesforce.client_id", None),
            ("salesforce.client_secret", None),
            ("salesforce.username", None),
            ("salesforce.private_key_file", None),
            ("salesforce.refresh_token", None),
            ("salesforce.api_version", "62.0"),
            ("salesforce.client_name", "salesforce-sync"),
            ("mongodb.uri", "mongodb://localhost:27017"),
            ("mongodb.database", "salesforce_sync"),
            ("sync.objects", ["Lead", "Contact", "Account"]),
            ("sync.frequency_minutes", 10),
            ("sync.mappings_file", Path("mappings.toml")),
            ("sync.outbox_max_attempts", 10),
            ("budget.poll_below_pct", 25),
            ("budget.stream_above_pct", 35),
            ("budget.reserve_pct", 10),
            ("admin.host", "0.0.0.0"),
            ("admin.port", 8080),
            ("admin.token", None),
            ("log.level", "INFO"),
            ("log.format", LogFormat.JSON),
        ],
    )
    def test_contract_default(self, attribute: str, default: Any) -> None:
        """With nothing set, each contract variable has its documented default."""
        assert _get(load_settings(require_credentials=False), attribute) == default

    @pytest.mark.parametrize(
        ("variable", "value", "attribute", "expected"),
        [
            ("SFSYNC_SALESFORCE__LOGIN_URL", "https://test.salesforce.com/", "salesforce.login_url",
             "https://test.salesforce.com"),
            ("SFSYNC_SALESFORCE__AUTH_FLOW", "Client_Credentials", "salesforce.auth_flow",
             AuthFlow.CLIENT_CREDENTIALS),
            ("SFSYNC_SALESFORCE__CLIENT_SECRET", "s3cret", "salesforce.client_secret", "s3cret"),
            ("SFSYNC_MONGODB__URI", "mongodb://a:b@h/?replicaSet=rs0", "mongodb.uri",
             "mongodb://a:b@h/?replicaSet=rs0"),
            ("SFSYNC_SYNC__OBJECTS", "Lead, Account", "sync.objects", ["Lead", "Account"]),
            ("SFSYNC_SYNC__OBJECTS", '["Contact", "Contact"]', "sync.objects", ["Contact"]),
            ("SFSYNC_SYNC__FREQUENCY_MINUTES", "5", "sync.frequency_minutes", 5),
            ("SFSYNC_SYNC__OUTBOX_MAX_ATTEMPTS", "3", "sync.outbox_max_attempts", 3),
            ("SFSYNC_ADMIN__PORT", "9000", "admin.port", 9000),
            ("SFSYNC_ADMIN__TOKEN", "", "admin.token", None),
            ("SFSYNC_LOG__LEVEL", "debug", "log.level", "DEBUG"),
            ("SFSYNC_LOG__FORMAT", "CONSOLE", "log.format", LogFormat.CONSOLE),
        ],
    )
    def test_variable_is_read(
        self, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, attribute: str, expected: Any
    ) -> None:
        """Each variable is read from the environment (case-insensitive enums, empty = unset)."""
        monkeypatch.setenv(variable, value)
        assert _get(load_settings(require_credentials=False), attribute) == expected


class TestBadValues:
    @pytest.mark.parametrize(
        ("variable", "value", "allowed"),
        [
            ("SFSYNC_SALESFORCE__LOGIN_URL", "login.salesforce.com", "http:// or https://"),
            ("SFSYNC_SALESFORCE__AUTH_FLOW", "password",
             "'jwt_bearer', 'client_credentials' or 'refresh_token'"),
            ("SFSYNC_SALESFORCE__API_VERSION", "62", "like 62.0"),
            ("SFSYNC_SALESFORCE__CLIENT_NAME", "my app", "letters, digits"),
            ("SFSYNC_MONGODB__DATABASE", "a.b", "database name"),
            ("SFSYNC_MONGODB__SYNC_LOG_RETENTION_DAYS", "0", "greater than or equal to 1"),
            ("SFSYNC_SYNC__OBJECTS", "Lead,Opportunity", "allowed: Lead, Contact, Account"),
            ("SFSYNC_SYNC__OBJECTS", '["Lead"', "delimiter"),
            ("SFSYNC_SYNC__FREQUENCY_MINUTES", "2", "1, 5 or 10"),
            ("SFSYNC_SYNC__FREQUENCY_MINUTES", "often", "1, 5 or 10"),
            ("SFSYNC_SYNC__BATCH_SIZE", "5000", "less than or equal to 2000"),
            ("SFSYNC_BUDGET__POLL_BELOW_PCT", "lots", "valid number"),
            ("SFSYNC_BUDGET__RESERVE_PCT", "150", "less than or equal to 100"),
            ("SFSYNC_ADMIN__PORT", "http", "valid integer"),
            ("SFSYNC_ADMIN__PORT", "70000", "less than or equal to 65535"),
            ("SFSYNC_LOG__LEVEL", "loud", "'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
            ("SFSYNC_LOG__FORMAT", "xml", "'json' or 'console'"),
        ],
    )
    def test_one_line_naming_variable_and_allowed(
        self, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, allowed: str
    ) -> None:
        """A bad value stops start-up with one line: the variable, then what is allowed."""
        monkeypatch.setenv(variable, value)
        with pytest.raises(ConfigError) as caught:
            load_settings(require_credentials=False)
        message = str(caught.value)
        assert message.startswith(f"{variable}: ")
        assert allowed in message
        assert "\n" not in message

    def test_budget_thresholds_must_be_ordered(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """RESERVE <= POLL_BELOW <= STREAM_ABOVE, and the error names all three variables."""
        monkeypatch.setenv("SFSYNC_BUDGET__RESERVE_PCT", "30")
        with pytest.raises(ConfigError, match=r"SFSYNC_BUDGET__RESERVE_PCT <= SFSYNC_BUDGET__POLL_BELOW_PCT"):
            load_settings(require_credentials=False)

    def test_whole_section_as_non_json_is_a_config_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`SFSYNC_SALESFORCE=...` (not JSON) is a one-line ConfigError, not a traceback."""
        monkeypatch.setenv("SFSYNC_SALESFORCE", "login.salesforce.com")
        with pytest.raises(ConfigError, match=r"SFSYNC_SALESFORCE__LOGIN_URL"):
            load_settings(require_credentials=False)


class TestCredentials:
    @pytest.mark.parametrize(
        ("flow", "given", "expected"),
        [
            ("jwt_bearer", {}, pytest.raises(ConfigError, match=re.escape(
                "SFSYNC_SALESFORCE__AUTH_FLOW=jwt_bearer needs SFSYNC_SALESFORCE__CLIENT_ID, "
                "SFSYNC_SALESFORCE__USERNAME, SFSYNC_SALESFORCE__PRIVATE_KEY_FILE"))),
            ("jwt_bearer", {"CLIENT_ID": "c", "USERNAME": "u", "PRIVATE_KEY_FILE": "k.pem"}, nullcontext()),
            ("client_credentials", {"CLIENT_ID": "c"},
             pytest.raises(ConfigError, match=r"needs SFSYNC_SALESFORCE__CLIENT_SECRET$")),
            ("client_credentials", {"CLIENT_ID": "c", "CLIENT_SECRET": "s"}, nullcontext()),
            ("refresh_token", {"CLIENT_ID": "c", "CLIENT_SECRET": "s"},
             pytest.raises(ConfigError, match=r"needs SFSYNC_SALESFORCE__REFRESH_TOKEN$")),
            ("refresh_token", {"CLIENT_ID": "c", "REFRESH_TOKEN": "r"}, nullcontext()),
        ],
    )
    def test_each_flow_needs_its_credentials(
        self, monkeypatch: pytest.MonkeyPatch, flow: str, given: dict[str, str],
        expected: AbstractContextManager[Any],
    ) -> None:
        """The chosen auth flow names the credential variables it still needs."""
        monkeypatch.setenv("SFSYNC_SALESFORCE__AUTH_FLOW", flow)
        for name, value in given.items():
            monkeypatch.setenv(f"SFSYNC_SALESFORCE__{name}", value)
        with expected:
            load_settings()


class TestEnvFile:
    def test_default_dotenv_in_working_directory(self, tmp_path: Path) -> None:
        """Without SFSYNC_ENV_FILE, `.env` in the working directory is read."""
        (tmp_path / ".env").write_text("SFSYNC_SYNC__FREQUENCY_MINUTES=1\n")
        assert load_settings(require_credentials=False).sync.frequency_minutes == 1

    def test_env_file_variable_and_environment_precedence(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """SFSYNC_ENV_FILE names the file; real environment variables win over it."""
        path = tmp_path / "prod.env"
        path.write_text("SFSYNC_ADMIN__PORT=9001\nSFSYNC_LOG__LEVEL=ERROR\n")
        monkeypatch.setenv("SFSYNC_ENV_FILE", str(path))
        monkeypatch.setenv("SFSYNC_LOG__LEVEL", "DEBUG")
        settings = load_settings(require_credentials=False)
        assert (settings.admin.port, settings.log.level) == (9001, "DEBUG")

    def test_bad_value_in_env_file_names_the_variable(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """A bad value from the file is reported like one from the environment."""
        path = tmp_path / "prod.env"
        path.write_text("SFSYNC_SYNC__FREQUENCY_MINUTES=3\n")
        monkeypatch.setenv("SFSYNC_ENV_FILE", str(path))
        with pytest.raises(ConfigError, match=r"^SFSYNC_SYNC__FREQUENCY_MINUTES: .*1, 5 or 10"):
            load_settings(require_credentials=False)

    def test_named_env_file_must_exist(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """An SFSYNC_ENV_FILE that does not exist is an error, not silently ignored."""
        monkeypatch.setenv("SFSYNC_ENV_FILE", str(tmp_path / "nope.env"))
        with pytest.raises(ConfigError, match=r"^SFSYNC_ENV_FILE: no such file"):
            load_settings(require_credentials=False)


class TestEnvExample:
    EXAMPLE = REPO / ".env.example"

    def test_names_every_settings_field(self) -> None:
        """`.env.example` documents every field of Settings, so it cannot drift."""
        text = self.EXAMPLE.read_text()
        documented = set(re.findall(r"^(SFSYNC_[A-Z_]+)=", text, flags=re.MULTILINE))
        expected = {variable for variable, _ in _fields(Settings())}
        assert expected - documented == set(), "missing from .env.example"
        assert documented - expected == set(), "unknown variables in .env.example"

    def test_shows_the_defaults(self) -> None:
        """Loading `.env.example` as it is gives exactly the defaults."""
        assert load_settings(self.EXAMPLE, require_credentials=False) == load_settings(
            require_credentials=False
        )


SAMPLE = """
[people.first_name]
lead = "FirstName"
contact = "FirstName"
[people.company_crm_id]
contact = "AccountId"
direction = "from_salesforce"
[people.owner_crm_id]
contact = "OwnerId"
[companies.name]
account = "Name"
merge = "salesforce_unless_blank"
[companies.domain]
account = "Website"
[[users]]
local = "u-1"
salesforce = "005000000000001AAA"
[rules]
create_in_salesforce = "contact"
"""


class TestMappings:
    def test_sample_parses(self) -> None:
        """A valid file gives per-object mappings, users and rules."""
        mappings = parse_mappings(SAMPLE)
        contact = {m.local_field: m for m in mappings.for_object("Contact")}
        assert contact["company_crm_id"].direction is Direction.FROM_SALESFORCE
        assert [m.sf_field for m in mappings.for_object("Lead")] == ["FirstName"]
        assert mappings.for_object("Account")[0].merge is MergeBehaviour.SALESFORCE_UNLESS_BLANK
        assert mappings.local_user("005000000000001") == "u-1"
        assert mappings.rules.create_in_salesforce == "contact"
        assert mappings.accounts_importable()

    @pytest.mark.parametrize(
        ("toml", "key"),
        [
            ('[people.first_name]\nleed = "FirstName"', "people.first_name.leed"),
            ('[people.first_name]\nlead = "FirstName"\ndirection = "sideways"',
             "people.first_name.direction"),
            ('[people.first_name]\nlead = "FirstName"\nmerge = "newest"', "people.first_name.merge"),
            ("[people.first_name]\ndirection = \"both\"", "people.first_name"),
            ('[people.first_name]\nlead = "First Name"', "people.first_name.lead"),
            ('[companies.name]\nlead = "Name"', "companies.name"),
            ('[[users]]\nlocal = "u"\nsalesforce = "003000000000001"', "users.0.salesforce"),
            ('[rules]\ncreate_in_salesforce = "account"', "rules.create_in_salesforce"),
            ("[people.FirstName]\nlead = \"FirstName\"", "people.FirstName"),
        ],
    )
    def test_error_names_the_key(self, tmp_path: Path, toml: str, key: str) -> None:
        """Every mappings problem is one line naming the offending key."""
        path = tmp_path / "mappings.toml"
        path.write_text(toml)
        with pytest.raises(ConfigError) as caught:
            load_mappings(path)
        assert key in str(caught.value)
        assert "\n" not in str(caught.value)

    def test_invalid_toml(self, tmp_path: Path) -> None:
        """A TOML syntax error names the file."""
        path = tmp_path / "mappings.toml"
        path.write_text("[people.first_name\n")
        with pytest.raises(ConfigError, match="not valid TOML"):
            load_mappings(path)

    def test_missing_file_names_the_variable(self, tmp_path: Path) -> None:
        """An unreadable mappings file names SFSYNC_SYNC__MAPPINGS_FILE."""
        with pytest.raises(ConfigError, match=r"^SFSYNC_SYNC__MAPPINGS_FILE: cannot read"):
            load_mappings(tmp_path / "absent.toml")


_NAME_ONLY = '[people.last_name]\nlead = "LastName"\ncontact = "LastName"\n'
_RULES_OFF = {"create_person_from_salesforce": "false", "create_in_salesforce": '"none"',
              "on_salesforce_owner_change": '"ignore"'}


def _owner_rules(owner: str | None, **rules: str) -> str:
    """People mapped by last name, `owner` the [people.owner_crm_id] table's lines (None: not
    mapped), every rule that needs an owner off except `rules`."""
    table = "" if owner is None else f"[people.owner_crm_id]\n{owner}\n"
    settings = {**_RULES_OFF, **rules}
    return _NAME_ONLY + table + "[rules]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())


class TestRulesThatNeedTheOwner:
    """The product's help: Owner CRM ID "must be set to use" the create rules and the owner-change
    rule. A rule that needs it without the mapping refuses to start, one line naming the mapping."""

    @pytest.mark.parametrize(("toml", "missing"), [
        (_owner_rules(None, create_person_from_salesforce="true"), "[people.owner_crm_id]"),
        (_owner_rules(None, create_in_salesforce='"lead"'), "[people.owner_crm_id]"),
        (_owner_rules('contact = "OwnerId"', create_in_salesforce='"lead"'), 'lead = "OwnerId"'),
        (_owner_rules('lead = "OwnerId"', create_in_salesforce='"contact"'), 'contact = "OwnerId"'),
        (_owner_rules(None, on_salesforce_owner_change='"update_owner"'), "[people.owner_crm_id]"),
        (_NAME_ONLY, "[people.owner_crm_id]"),  # the rules' defaults need it too
    ])
    def test_a_rule_without_the_owner_mapping_is_refused(self, tmp_path: Path, toml: str,
                                                         missing: str) -> None:
        path = tmp_path / "mappings.toml"
        path.write_text(toml)
        with pytest.raises(ConfigError) as caught:
            load_mappings(path)
        message = str(caught.value)
        assert missing in message and "rules." in message and "\n" not in message
        assert "(root)" not in message

    @pytest.mark.parametrize("toml", [
        _owner_rules(None),  # every rule that needs it is off
        _owner_rules('lead = "OwnerId"', create_person_from_salesforce="true",
                     create_in_salesforce='"lead"', on_salesforce_owner_change='"update_owner"'),
        _owner_rules('contact = "OwnerId"', create_in_salesforce='"contact"'),
        '[companies.name]\naccount = "Name"\n',  # no People mapped: the People rules have nothing to do
    ])
    def test_rules_with_what_they_need_load(self, toml: str) -> None:
        parse_mappings(toml)
