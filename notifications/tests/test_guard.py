"""The SSRF guard: which destinations a webhook delivery may reach."""

import pytest

from notifications import guard

REFUSED = [
    "http://127.0.0.1/",
    "http://localhost:8000/",
    "http://2130706433/",  # 127.0.0.1, decimal-encoded
    "http://0x7f000001/",
    "http://0.0.0.0/",
    "http://10.0.0.5/",
    "http://172.16.3.4/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://[fd00::1]/",
    "http://[fe80::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::]/",
    "ftp://example.com/",
    "http://user:pw@example.com/",
    "not a url",
]


@pytest.mark.parametrize("url", REFUSED)
def test_non_public_destinations_are_refused(url):
    with pytest.raises(guard.UnsafeURL):
        guard.check_url(url, allow_private=False)


def test_a_public_address_passes_and_is_the_address_used():
    target = guard.check_url("https://93.184.216.34:8443/in?a=b", allow_private=False)
    assert (target.address, target.port, target.path) == ("93.184.216.34", 8443, "/in?a=b")
