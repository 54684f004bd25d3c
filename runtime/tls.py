"""TLS for the manager's sockets: the manager serves a certificate, nodes and the bot verify it.

A client trusts either a CA file or one pinned certificate (its SHA-256, as `openssl x509 -fingerprint
-sha256` prints it). A wss:// or https:// URL never falls back to plain text: a TLS failure is an error
that names its cause.
"""
from __future__ import annotations

import ssl

import aiohttp

from runtime.settings import ConfigError


def server_context(cert: str, key: str) -> ssl.SSLContext | None:
    """The manager's context, or None to serve plain HTTP (both settings empty)."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("tls_cert and tls_key go together: one is set, the other is empty",
                          "set both (PEM files) to serve HTTPS/WSS, or neither for plain HTTP on loopback")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert} with key {key}: {exc}",
                          "point tls_cert and tls_key at a readable PEM certificate and its private key") from None
    return context


def client_ssl(url: str, ca_file: str, fingerprint: str) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
    """How a client checks the manager at `url`: a CA file, a pinned certificate, or the system's CAs."""
    secure = url.startswith(("wss://", "https://"))
    if (ca_file or fingerprint) and not secure:
        raise ConfigError(f"a TLS setting is given but the manager URL {url} is plain text",
                          "use a wss:// (node) or https:// (bot) URL: a TLS setting never falls back to plain text")
    if ca_file and fingerprint:
        raise ConfigError("tls_ca and tls_fingerprint are both set", "trust a CA file or pin one certificate, not both")
    if fingerprint:
        digest = fingerprint.replace(":", "").strip().lower()
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ConfigError(f"tls_fingerprint is not a SHA-256 digest: {fingerprint!r}",
                              "give the certificate's SHA-256 as 64 hex digits (colons allowed), as "
                              "`openssl x509 -noout -fingerprint -sha256 -in cert.pem` prints it")
        return aiohttp.Fingerprint(raw)
    if ca_file:
        try:
            return ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA file {ca_file}: {exc}", "point tls_ca at a readable PEM file") from None
    return True  # the system's CAs for a secure URL; nothing at all for a plain one (loopback)


def failure(exc: BaseException) -> str | None:
    """The words for a TLS failure, or None when `exc` is not one."""
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return (f"TLS: the manager's certificate (SHA-256 {exc.got.hex()}) is not the pinned one "
                f"({exc.expected.hex()}); check tls_fingerprint, or whether you reach the right manager")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return (f"TLS: the manager's certificate is not trusted ({exc.certificate_error}); check tls_ca, or whether "
                "you reach the right manager")
    if isinstance(exc, aiohttp.ClientConnectorSSLError | ssl.SSLError):
        return f"TLS: the handshake with the manager failed ({exc}); is it serving TLS on that port?"
    return None
