"""``valid_member_url``: the ``AddMember.url`` a member certifies is one every client can
build a request for (``httpx.URL``), or it is refused."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpc.codec import MessageDecodeError
from mpc.membership.messages import AddMember, valid_member_url
from mpc.participant import Participant

GOOD = [
    "http://node-5.example.org:8080",
    "https://kms.example.com",
    "https://kms.example.com/",
    "http://127.0.0.1:8443/kms",
    "http://[::1]:8080",
    "https://xn--bcher-kva.example",
    "http://localhost:1",
    "http://localhost:65535",
]
BAD = [
    "https://xn--",
    "http://?",
    "http://#",
    "http://:abc",
    "http://[::1",
    "http://host:0",
    "http://host:65536",
    "http://host:80a",
    "http://user@host",
    "http://host/?q=1",
    "http://host/#frag",
    "ftp://host",
    "http://",
    "http://-host",
    "http://ho st",
    "http://hos\u00e9t",
    "https://xn--a.example",
]


@pytest.mark.parametrize("url", GOOD)
def test_good_urls_are_accepted_and_build(url: str) -> None:
    assert valid_member_url(url)
    httpx.URL(url)


@pytest.mark.parametrize("url", BAD)
def test_unbuildable_or_ambiguous_urls_are_refused(url: str) -> None:
    assert not valid_member_url(url)


def test_add_member_with_a_refused_url_does_not_decode() -> None:
    add = AddMember(
        Participant(5, b"\x01" * 32, b"\x02" * 32, b"\x03" * 64), b"", url="http://host"
    )
    raw = add.encode()
    bad = raw.replace(b"http://host", b"https://xn--")
    with pytest.raises(MessageDecodeError):
        AddMember.decode(bad)


@given(
    st.sampled_from(["http://", "https://"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
def test_every_accepted_url_builds(scheme: str, rest: str) -> None:
    url = scheme + rest
    if valid_member_url(url):
        httpx.URL(url)
