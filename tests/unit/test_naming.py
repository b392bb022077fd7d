import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctxext.errors import SpecError
from ctxext.manifest import job_from_object
from ctxext.naming import MAX_JOB_NAME, pytorchjob_name
from tests.unit.helpers import minimal

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: Every name a DNS-1123 label allows (Kubernetes' own rule for object names), digits first included.
names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)


def test_short_names_are_readable():
    assert pytorchjob_name("tiny", 1, 1) == "tiny-s1-a1"


@given(names, st.integers(1, 16), st.integers(1, 101))
def test_names_fit_kubeflow_pod_names_and_are_deterministic(cej, stage, attempt):
    """A name the manifest admits always makes valid job and pod names; the others are refused in plain words."""
    obj = minimal()
    obj["metadata"]["name"] = cej
    try:
        job_from_object(obj)
    except SpecError as exc:
        assert cej[0].isdigit() and "metadata.name: must start with a letter (a-z)" in str(exc)
        return
    name = pytorchjob_name(cej, stage, attempt)
    assert len(name) <= MAX_JOB_NAME and DNS1035.match(name)
    assert len(name + "-worker-9999") <= 63
    assert name == pytorchjob_name(cej, stage, attempt)
    assert name.endswith(f"-s{stage}-a{attempt}")


def test_a_name_starting_with_a_digit_is_refused():
    obj = minimal()
    obj["metadata"]["name"] = "8b-llama"
    with pytest.raises(SpecError, match="must start with a letter"):
        job_from_object(obj)


def test_long_names_sharing_a_prefix_do_not_collide():
    a, b = "x" * 60 + "abc", "x" * 60 + "abd"
    assert pytorchjob_name(a, 1, 1) != pytorchjob_name(b, 1, 1)
