public import SecureTransport

extension Session {
    /// The peer's TLS certificate, when it presented one.
    public var peerCertificate: PeerCertificate? { self.transport?.tls?.peerCertificate }
    /// What the TLS handshake agreed on (version, cipher suite, resumption), for a TLS session.
    public var tlsHandshake: TLSHandshakeInfo? { self.transport?.tls }
}
