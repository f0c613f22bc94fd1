"""The policy file: strict parsing of every key, and rejection of bad values."""

from __future__ import annotations

import pytest

from mbd_cert.errors import FileMissing, InputError
from mbd_cert.policy import Policy, find_policy, load_policy, parse_policy

GOOD = """\
policy_version = 1
max_cumulative_epsilon = 2.5
required_level = 1
required_sensitivity_methods = ["clip-bound", "declared"]
trusted_keys = ["keys/issuer.pub"]
allow_inconclusive = false
"""


def _write(tmp_path, text, name="mbd-cert-policy.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_policy_reads_every_key(tmp_path):
    policy = load_policy(_write(tmp_path, GOOD))
    assert policy.max_cumulative_epsilon == 2.5
    assert policy.required_level == 1
    assert policy.required_sensitivity_methods == ("clip-bound", "declared")
    assert policy.trusted_keys == ("keys/issuer.pub",)
    assert policy.allow_inconclusive is False


def test_empty_policy_has_defaults():
    assert parse_policy({}) == Policy()


def test_strict_is_read():
    assert parse_policy({"strict": True}).strict is True
    assert Policy().strict is False


def test_max_delta_is_read():
    assert parse_policy({"max_delta": 1e-5}).max_delta == 1e-5
    assert parse_policy({}).max_delta is None


def test_integer_epsilon_becomes_float():
    policy = parse_policy({"max_cumulative_epsilon": 3})
    assert policy.max_cumulative_epsilon == 3.0
    assert isinstance(policy.max_cumulative_epsilon, float)


BAD_VALUES = [
    ("max_cumulative_epsilon = nan", "max_cumulative_epsilon"),
    ("max_cumulative_epsilon = inf", "max_cumulative_epsilon"),
    ("max_cumulative_epsilon = 0", "max_cumulative_epsilon"),
    ("max_cumulative_epsilon = -1.0", "max_cumulative_epsilon"),
    ("max_cumulative_epsilon = true", "max_cumulative_epsilon"),
    ('max_cumulative_epsilon = "2"', "max_cumulative_epsilon"),
    ("max_delta = 0", "max_delta"),
    ("max_delta = 1", "max_delta"),
    ("max_delta = nan", "max_delta"),
    ("max_delta = true", "max_delta"),
    ("required_level = 0", "required_level"),
    ("required_level = 4", "required_level"),
    ("required_level = 1.0", "required_level"),
    ("required_level = true", "required_level"),
    ('required_sensitivity_methods = "clip-bound"', "required_sensitivity_methods"),
    ("required_sensitivity_methods = []", "required_sensitivity_methods"),
    ('required_sensitivity_methods = ["guessed"]', "required_sensitivity_methods"),
    ('required_sensitivity_methods = ["declared", "declared"]', "required_sensitivity_methods"),
    ('trusted_keys = "issuer.pub"', "trusted_keys"),
    ('trusted_keys = ["/etc/issuer.pub"]', "trusted_keys[0]"),
    ('trusted_keys = ["../issuer.pub"]', "trusted_keys[0]"),
    ('trusted_keys = [""]', "trusted_keys"),
    ("trusted_keys = [1]", "trusted_keys"),
    ('allow_inconclusive = "yes"', "allow_inconclusive"),
    ("strict = 1", "strict"),
    ('strict = "true"', "strict"),
    ("policy_version = 2", "policy_version"),
    ("policy_version = 1.0", "policy_version"),
    ("max_epsilon = 1.0", "max_epsilon"),
    ("[verify]\nlevel = 1", "verify"),
]


@pytest.mark.parametrize(("text", "key"), BAD_VALUES)
def test_bad_value_rejected_naming_key(tmp_path, text, key):
    """R-POLF-1, R-POLF-3: a bad key, value or policy_version is E_POLICY_INVALID naming it."""
    with pytest.raises(InputError) as caught:
        load_policy(_write(tmp_path, text + "\n"))
    assert caught.value.code == "E_POLICY_INVALID"
    assert caught.value.exit_code == 2
    assert key in caught.value.message


def test_bad_value_hint_lists_the_keys(tmp_path):
    # The hint cannot point at docs a CI job does not have, so it names the keys.
    with pytest.raises(InputError) as caught:
        load_policy(_write(tmp_path, 'required_level = "2"\n'))
    for key in ("max_cumulative_epsilon", "required_level", "trusted_keys"):
        assert key in caught.value.hint
    assert "SPEC.md" not in caught.value.hint


def test_invalid_toml_rejected(tmp_path):
    """R-POLF-1: a file that is not TOML is E_POLICY_INVALID."""
    with pytest.raises(InputError) as caught:
        load_policy(_write(tmp_path, "max_cumulative_epsilon = \n"))
    assert caught.value.code == "E_POLICY_INVALID"
    assert "not valid TOML" in caught.value.message


def test_non_utf8_rejected(tmp_path):
    """R-POLF-1: a file that is not UTF-8 is E_POLICY_INVALID."""
    path = tmp_path / "p.toml"
    path.write_bytes(b"# \xff\n")
    with pytest.raises(InputError) as caught:
        load_policy(path)
    assert caught.value.code == "E_POLICY_INVALID"


def test_deeply_nested_policy_invalid(tmp_path):
    path = _write(tmp_path, "max_cumulative_epsilon = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(InputError) as info:
        load_policy(path)
    assert info.value.code == "E_POLICY_INVALID"
    assert "too deeply" in str(info.value)


def test_missing_policy_file(tmp_path):
    with pytest.raises(FileMissing):
        load_policy(tmp_path / "absent.toml")


def test_find_policy_default_names(tmp_path):
    assert find_policy(tmp_path) is None
    _write(tmp_path, GOOD, name=".mbd-cert.toml")
    assert find_policy(tmp_path) == tmp_path / ".mbd-cert.toml"


@pytest.mark.parametrize("kind", ["dangling-link", "directory"])
def test_unreadable_default_policy_is_not_skipped(tmp_path, kind):
    """R-REPO-2: a default policy file that is not a readable regular file is rejected."""
    # Skipping it would verify the repository with no policy at all.
    path = tmp_path / ".mbd-cert.toml"
    if kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "shared" / "policy.toml")
    assert find_policy(tmp_path) == path
    with pytest.raises(InputError) as caught:
        load_policy(path)
    assert caught.value.exit_code == 2


def test_find_policy_rejects_two_files(tmp_path):
    """R-POLF-1: two default policy files at once are E_POLICY_INVALID."""
    _write(tmp_path, GOOD, name=".mbd-cert.toml")
    _write(tmp_path, GOOD, name="mbd-cert-policy.toml")
    with pytest.raises(InputError) as caught:
        find_policy(tmp_path)
    assert caught.value.code == "E_POLICY_INVALID"


@pytest.mark.parametrize(("text", "expected", "absent"), [
    ("max_cumulative_epsilon = nan", "nan (not a number) cannot be a limit", "reject every"),
    ("max_cumulative_epsilon = inf", "infinite limit accepts every", "reject every"),
    ("max_cumulative_epsilon = -inf", "0 or less would reject every", "infinite"),
    ("max_cumulative_epsilon = 0", "0 or less would reject every", "infinite"),
    ("max_delta = nan", "nan is not a probability", "e.g."),
    ("max_delta = inf", "inf is not a probability", "e.g."),
])
def test_nonfinite_limit_has_own_hint(tmp_path, text, expected, absent):
    """R-POLF-1: NaN and infinite limits are rejected, each with a hint of its own."""
    with pytest.raises(InputError) as caught:
        load_policy(_write(tmp_path, text + "\n"))
    assert expected in caught.value.hint
    assert absent not in caught.value.hint


HUGE_DECIMAL = "9" * 400  # beyond the largest double
HUGE_HEX = "0x" + "f" * 5000  # str() raises for its 6,021 decimal digits


@pytest.mark.parametrize(("text", "key"), [
    (f"max_cumulative_epsilon = {HUGE_DECIMAL}", "max_cumulative_epsilon"),
    (f"max_delta = {HUGE_DECIMAL}", "max_delta"),
    (f"max_delta = -{HUGE_DECIMAL}", "max_delta"),
    (f"max_delta = {HUGE_HEX}", "max_delta"),
    (f"required_level = {HUGE_HEX}", "required_level"),
    (f"policy_version = {HUGE_HEX}", "policy_version"),
    (f"trusted_keys = [{HUGE_HEX}]", "trusted_keys"),
    (f"allow_inconclusive = [{HUGE_HEX}]", "allow_inconclusive"),
], ids=["epsilon", "delta", "negative-delta", "hex-delta", "level", "version", "key-path",
        "list"])
def test_huge_integer_is_invalid(tmp_path, text, key):
    # tomllib reads integers of any size, and float() and str() raise for such a value.
    with pytest.raises(InputError) as caught:
        load_policy(_write(tmp_path, text + "\n"))
    assert caught.value.code == "E_POLICY_INVALID"
    assert key in caught.value.message
    assert len(caught.value.message) < 300


def test_5000_digit_integer_invalid(tmp_path):
    # tomllib's int() raises a ValueError for it that is not a TOMLDecodeError.
    with pytest.raises(InputError) as caught:
        load_policy(_write(tmp_path, "required_level = " + "9" * 5000 + "\n"))
    assert caught.value.code == "E_POLICY_INVALID"
    assert "too many digits" in caught.value.message


def test_many_unknown_keys_message_shortened(tmp_path):
    text = "".join(f"key{i} = 1\n" for i in range(3000))
    with pytest.raises(InputError) as caught:
        load_policy(_write(tmp_path, text))
    assert "3000 unknown key(s)" in caught.value.message
    assert len(caught.value.message) < 400


def test_models_table_is_read(tmp_path):
    """R-REPO-11: each entry becomes a pin, in the order of the file."""
    text = ('[models."models/b/model.safetensors"]\ndeleted_modalities = ["audio"]\n'
            '[models."models/a/x.safetensors"]\ndeleted_modalities = ["vision", "audio"]\n'
            'min_sequence_number = 2\n')
    policy = load_policy(_write(tmp_path, text))
    assert [pin.path for pin in policy.models] == ["models/b/model.safetensors",
                                                   "models/a/x.safetensors"]
    assert policy.models[0].deleted_modalities == ("audio",)
    assert policy.models[0].min_sequence_number is None
    assert policy.models[1].deleted_modalities == ("vision", "audio")
    assert policy.models[1].min_sequence_number == 2
    assert Policy().models == ()


BAD_MODEL_ENTRIES = [
    ('"a/./m.safetensors"', '["audio"]', 'models."a/./m.safetensors" is not in normal form'),
    ('"a//m.safetensors"', '["audio"]', 'models."a//m.safetensors" is not in normal form'),
    ('"a/m.safetensors/"', '["audio"]', 'models."a/m.safetensors/" is not in normal form'),
    ('"./m.safetensors"', '["audio"]', 'models."./m.safetensors" is not in normal form'),
    ('".hidden/m.safetensors"', '["audio"]', 'models.".hidden/m.safetensors" has a component'),
    ('"a/.safetensors"', '["audio"]', 'models."a/.safetensors" has a component'),
    ('"a/m\\tx.safetensors"', '["audio"]', 'models."a/m\\tx.safetensors" contains a control'),
    ('"a/m.SAFETENSORS"', '["audio"]', 'models."a/m.SAFETENSORS" does not name a model'),
    ('""', '["audio"]', 'models."" is not in normal form'),
    ('"a/m.safetensors"', '["Audio"]', 'deleted_modalities[0] is not a modality name'),
    ('"a/m.safetensors"', '[""]', 'deleted_modalities[0] must be a non-empty string'),
    ('"a/m.safetensors"', '[1]', 'deleted_modalities[0] must be a non-empty string'),
]


@pytest.mark.parametrize(("path", "modalities", "expected"), BAD_MODEL_ENTRIES)
def test_bad_model_entry_rejected(tmp_path, path, modalities, expected):
    """R-POLF-1: a pin that verify-repo could not apply is E_POLICY_INVALID naming it."""
    text = f"[models.{path}]\ndeleted_modalities = {modalities}\n"
    with pytest.raises(InputError) as caught:
        load_policy(_write(tmp_path, text))
    assert caught.value.code == "E_POLICY_INVALID"
    assert expected in caught.value.message


def test_models_entry_must_be_table(tmp_path):
    with pytest.raises(InputError) as caught:
        load_policy(_write(tmp_path, 'models = { "a/m.safetensors" = ["audio"] }\n'))
    assert caught.value.code == "E_POLICY_INVALID"
    assert 'models."a/m.safetensors" must be a table, got list' in caught.value.message
