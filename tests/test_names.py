"""The naming guarantees: always valid, never colliding, stable, readable when possible."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudidentity_spawner import names

ENCODERS = [
    (names.ksa_name, names.is_valid_ksa_name),
    (names.iam_role_name, names.is_valid_iam_role_name),
    (names.gsa_account_id, names.is_valid_gsa_account_id),
    (names.label_value, names.is_valid_label_value),
]
ALL_ENCODERS = [e for e, _ in ENCODERS] + [names.resource_part]

# Text that is likely to hit edge cases: separators, case, look-alike hash markers, long runs.
tricky_text = st.one_of(
    st.text(),
    st.text(alphabet="aA0-_.@/*?${}:İß--- ", max_size=80),
    st.text(min_size=60, max_size=300),
)


@pytest.mark.parametrize("encode,is_valid", ENCODERS, ids=lambda f: getattr(f, "__name__", ""))
@given(value=tricky_text)
@settings(max_examples=400)
def test_every_encoding_is_valid(encode, is_valid, value):
    assert is_valid(encode(value))


@pytest.mark.parametrize("encode", ALL_ENCODERS, ids=lambda f: f.__name__)
@given(a=tricky_text, b=tricky_text)
@settings(max_examples=400)
def test_different_inputs_never_share_a_name(encode, a, b):
    if a != b:
        assert encode(a) != encode(b)


@pytest.mark.parametrize("encode", ALL_ENCODERS, ids=lambda f: f.__name__)
@given(value=tricky_text)
def test_encoding_is_deterministic(encode, value):
    assert encode(value) == encode(value)


@given(value=tricky_text)
def test_resource_part_never_carries_policy_syntax(value):
    encoded = names.resource_part(value)
    assert not set(encoded) & set("/*?${}")


@pytest.mark.parametrize(
    "encode,value,expected",
    [
        (names.ksa_name, "jupyter-alice", "jupyter-alice"),
        (names.iam_role_name, "hub-alice", "hub-alice"),
        (names.gsa_account_id, "jh-alice", "jh-alice"),
        (names.label_value, "Alice", "Alice"),
    ],
)
def test_valid_names_pass_through_unchanged(encode, value, expected):
    assert encode(value) == expected


def test_changed_names_carry_a_hash_of_the_original():
    assert names.ksa_name("Alice").startswith("alice---")
    assert names.ksa_name("Alice") != names.ksa_name("alice")
    # A name that merely looks hashed cannot pass through and impersonate one.
    hashed = names.ksa_name("Alice")
    assert names.ksa_name(hashed) != hashed


def test_iam_names_differing_only_in_case_get_different_roles():
    # IAM treats role names case-insensitively: "Alice" and "alice" must not clash.
    a, b = names.iam_role_name("Alice"), names.iam_role_name("alice")
    assert a.lower() != b.lower()


def test_long_names_are_truncated_within_limits():
    long = "a" * 200
    assert len(names.ksa_name(long)) == 63
    assert len(names.iam_role_name(long)) <= 64
    assert len(names.gsa_account_id(long)) == 30
    assert names.ksa_name(long) != names.ksa_name(long + "b")


def test_short_gsa_ids_are_padded_to_the_minimum():
    assert len(names.gsa_account_id("bob")) >= 6
    assert names.is_valid_gsa_account_id(names.gsa_account_id("bob"))


@pytest.mark.parametrize("encode", [names.ksa_name, names.iam_role_name, names.label_value, names.resource_part],
                         ids=lambda f: f.__name__)
def test_a_search_for_a_colliding_name_is_infeasible_where_names_reach_policies(encode):
    """ServiceAccount names land in trust policies, role names in ARNs, resource parts in
    storage prefixes: a self-chosen user name must not be searchable into a victim's.
    The suffix carries at least 128 bits of SHA-256 (2^32 tries would find a 32-bit one)."""
    suffix = encode("x" * 300).rsplit("---", 1)[1]
    assert set(suffix) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert len(suffix) * 5 >= 128


def test_gsa_ids_have_the_longest_suffix_that_fits():
    """30 characters leave room for 80 bits; the hub also checks each account's owner marker."""
    suffix = names.gsa_account_id("x" * 300).rsplit("---", 1)[1]
    assert len(suffix) * 5 >= 80
    assert len(names.gsa_account_id("x" * 300)) == 30


SCOPED_ENCODERS = [names.ksa_name, names.iam_role_name, names.gsa_account_id, names.azure_identity_name]


@pytest.mark.parametrize("encode", SCOPED_ENCODERS, ids=lambda f: f.__name__)
@given(user=tricky_text, shared=tricky_text)
@settings(max_examples=400)
def test_a_user_name_never_meets_a_group_or_hub_name(encode, user, shared):
    """Even where the rendered names are equal (user 'group-atlas' renders like group 'atlas')."""
    for scope in ("group", "hub"):
        assert encode(user) != encode(shared, scope)
        assert encode(shared, scope) != encode(shared, "hub" if scope == "group" else "group")


@pytest.mark.parametrize("encode", SCOPED_ENCODERS, ids=lambda f: f.__name__)
def test_names_rendered_alike_in_different_scopes_stay_apart(encode):
    rendered = {"jupyter-group-atlas", "jupyterhub-shared", "jh-group-atlas"}
    for name in rendered:
        assert len({encode(name), encode(name, "group"), encode(name, "hub")}) == 3
        assert encode(name) == name  # a user's valid name still passes through unchanged
