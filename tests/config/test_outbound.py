"""The outbound URL rule: https, or http to loopback; no credentials, query or fragment; never a
private, link-local or reserved address, literal or resolved."""
import pytest

from config.outbound import UnsafeUrl, check


def no_dns(host):
    return []


@pytest.mark.parametrize("url", [
    "https://api.bitbucket.org/2.0", "https://api.bitbucket.org/2.0/", "http://127.0.0.1:8000",
    "http://localhost:5000/2.0", "http://[::1]:9000", "https://127.0.0.2", "http://sim.localhost:80",
    "https://8.8.8.8/x",
])
def test_allowed(url):
    assert check(url, resolve=no_dns) == url.rstrip("/")


@pytest.mark.parametrize("url, why", [
    ("http://api.bitbucket.org/2.0", "plain http is allowed only to a loopback host"),
    ("ftp://api.bitbucket.org", "must be an https:// URL"),
    ("file:///etc/passwd", "must be an https:// URL"),
    ("gopher://127.0.0.1", "must be an https:// URL"),
    ("api.bitbucket.org/2.0", "must be an https:// URL"),
    ("https://", "must be an https:// URL"),
    ("https://user:pw@api.bitbucket.org", "user name or password"),
    ("https://user@api.bitbucket.org", "user name or password"),
    ("https://api.bitbucket.org/2.0?token=x", "no query or fragment"),
    ("https://api.bitbucket.org/2.0#x", "no query or fragment"),
    ("https://api.bitbucket.org/2.0?", "no query or fragment"),
    ("https://10.0.0.5/2.0", "private"),
    ("https://192.168.1.1", "private"),
    ("https://172.16.0.1", "private"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[fe80::1]/", "link-local"),
    ("https://[fd00::1]/", "private"),
    ("https://[::ffff:10.0.0.1]/", "private"),
    ("https://0.0.0.0/", "unspecified"),
    ("https://224.0.0.1/", "multicast"),
    ("https://100.64.0.1/", "reserved"),
    ("https://api.bitbucket.org:99999", "Port out of range"),
    ("https://api bitbucket.org", "without spaces"),
    ("https://x.org\n", "without spaces"),
    ("https://\u00e9xample.com", "printable ASCII"),
    ("https://x.org/" + "a" * 3000, "longer than"),
    ("", "a URL is required"),
    (None, "a URL is required"),
])
def test_refused_with_reason(url, why):
    with pytest.raises(UnsafeUrl, match=why) as err:
        check(url, "--api-url", resolve=no_dns)
    assert str(err.value).startswith("--api-url")
    assert "pw" not in str(err.value)


def test_a_name_resolving_to_a_private_address_is_refused():
    with pytest.raises(UnsafeUrl, match=r"host 'intranet.example' is a private address \(10.1.2.3\)"):
        check("https://intranet.example/2.0", resolve=lambda host: ["93.184.216.34", "10.1.2.3"])


def test_a_name_resolving_to_public_addresses_passes():
    assert check("https://api.example.com/2.0", resolve=lambda host: ["93.184.216.34", "2606:2800::1"])


def test_a_name_that_does_not_resolve_passes():
    assert check("https://bitbucket.test/2.0") == "https://bitbucket.test/2.0"
