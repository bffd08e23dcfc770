public import SecureTransport

extension Session {
    /// The peer's TLS certificate, when it presented one.
    public var peerCertificate: PeerCertificate? { self.transport?.tls?.peerCertificate }
    /// The node the peer's certificate names, under the server's
    /// ``ServerConfiguration/identityMapping`` (the first SAN DNS name, else the subject CN, on a
    /// client).
    public var peerIdentity: String? { self.transport?.peerIdentity }
    /// What the TLS handshake agreed on (version, cipher suite, resumption), for a TLS session.
    public var tlsHandshake: TLSHandshakeInfo? { self.transport?.tls }
}
