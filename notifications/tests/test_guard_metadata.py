"""The SSRF guard keeps cloud metadata and tunnelled private addresses out of reach, even
with AIMOS_WEBHOOK_ALLOW_PRIVATE (local development). Verdicts only: nothing connects."""

import pytest

from notifications import guard

ALWAYS_REFUSED = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.0.1/",
    "http://[fe80::1]/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://100.100.100.200/",
    "http://[::ffff:169.254.169.254]/",  # IPv4-mapped
    "http://[2002:a9fe:a9fe::]/",  # 6to4 of 169.254.169.254
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2002:0a00:0005::1]/",  # 6to4 of 10.0.0.5
    "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
    "http://[64:ff9b:1::c0a8:101]/",  # NAT64 (local-use) of 192.168.1.1
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
]


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize("url", ALWAYS_REFUSED)
def test_metadata_and_tunnelled_private_addresses_are_always_refused(url, allow_private):
    with pytest.raises(guard.UnsafeURL):
        guard.check_url(url, allow_private=allow_private)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000/", "http://10.0.0.5/", "http://[::1]/", "http://[fd00::1]/"]
)
def test_allow_private_still_lets_local_receivers_through(url):
    assert guard.check_url(url, allow_private=True).address


def test_the_setting_is_what_decides_by_default(settings):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = True
    assert guard.check_url("http://127.0.0.1:9/").address == "127.0.0.1"
    with pytest.raises(guard.UnsafeURL, match="metadata"):
        guard.check_url("http://169.254.169.254/")


def test_6to4_and_nat64_of_a_public_address_pass():
    assert guard.check_url("http://[2002:5db8:d822::1]/", allow_private=False).address
    assert guard.check_url("http://[64:ff9b::5db8:d822]/", allow_private=False).address
