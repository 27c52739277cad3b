"""IdentityPolicy: exact CN or DNS SAN, each way it refuses."""

from __future__ import annotations

import pytest

from sidecar.tls.identity import IdentityPolicy

META = "client.webhooks.fbclientcerts.com"


def cert(cns: tuple[str, ...] = (), dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()
         ) -> dict[str, object]:
    """A certificate in ``ssl.SSLObject.getpeercert()`` form."""
    return {
        "subject": tuple((("commonName", cn),) for cn in cns),
        "subjectAltName": tuple(("DNS", d) for d in dns) + tuple(("IP Address", i) for i in ips),
    }


policy = IdentityPolicy([META])


def test_cn_or_dns_san_match_exactly() -> None:
    assert policy.allows(cert(cns=(META,)))
    assert policy.allows(cert(cns=("other",), dns=("x.example", META)))


@pytest.mark.parametrize("peer", [
    None,
    {},
    cert(cns=("evil.example.com",)),
    cert(cns=("x" + META,)),                    # no suffix match
    cert(cns=(META + ".evil.com",)),            # no prefix match
    cert(cns=("*.webhooks.fbclientcerts.com",)),  # no wildcards
    cert(cns=(META, "evil.example.com")),       # several CNs: ambiguous, refused
    cert(ips=(META,)),                          # only DNS SANs count
    cert(cns=("client.webhoo\u212as.fbclientcerts.com",)),  # Kelvin sign is not "k"
    cert(cns=("CLIENT.Webhooks.FBCLIENTCERTS.com",)),       # exact: no case folding
    cert(dns=(META.upper(),)),
    cert(dns=("client.webhooks.fbclientcerts.com.",)),      # trailing dot is another name
])
def test_refusals(peer: dict[str, object] | None) -> None:
    assert not policy.allows(peer)


def test_needs_at_least_one_name() -> None:
    with pytest.raises(ValueError):
        IdentityPolicy([])


def test_repr_lists_names() -> None:
    assert META in repr(policy)
