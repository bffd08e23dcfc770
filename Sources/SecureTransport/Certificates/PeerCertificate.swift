#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// The peer's leaf certificate as seen after a handshake: who it names and how to pin it.
public struct PeerCertificate: Sendable, Hashable {
    /// The subject distinguished name in RFC 2253 form, e.g. `CN=collab-1`.
    public var subject: String
    /// The issuer distinguished name in RFC 2253 form.
    public var issuer: String
    /// The subject's common name, if it has one.
    public var commonName: String?
    /// The DNS names among the subject alternative names, in certificate order.
    public var dnsNames: [String]
    /// The IP addresses among the subject alternative names, in text form.
    public var ipAddresses: [String]
    /// The URIs among the subject alternative names (SPIFFE IDs, for example), in certificate order.
    public var uris: [String] = []
    /// The serial number in upper-case hex, without leading zeros.
    public var serialNumber: String = ""
    /// The start of the validity period.
    public var notValidBefore = Date(timeIntervalSince1970: 0)
    /// The end of the validity period.
    public var notValidAfter = Date(timeIntervalSince1970: 0)
    /// The SHA-256 digest of the DER certificate.
    public var sha256Fingerprint: [UInt8]
    /// The certificate in DER.
    public var derBytes: [UInt8]

    /// The identity smsg/1 binds a node to by default: the first SAN DNS name, else the subject
    /// CN (``IdentityMapping/firstDNSName``).
    public var identity: String? {
        IdentityMapping.firstDNSName.identity(of: self)
    }

    /// The fingerprint as colon-separated upper-case hex, as `openssl x509 -fingerprint` prints it.
    public var sha256FingerprintHex: String {
        self.sha256Fingerprint.map { byte in
            let hex = String(byte, radix: 16, uppercase: true)
            return byte < 16 ? "0" + hex : hex
        }.joined(separator: ":")
    }
}

/// What a completed handshake agreed on.
public struct TLSHandshakeInfo: Sendable, Hashable {
    /// The negotiated protocol version.
    public var version: TLSConfiguration.Version
    /// The negotiated cipher suite, in IANA/OpenSSL naming (e.g. `TLS_AES_128_GCM_SHA256`).
    public var cipherSuite: String
    /// The application protocol chosen by ALPN, if any.
    public var applicationProtocol: String?
    /// Whether an earlier session was resumed (no full handshake).
    public var sessionReused: Bool
    /// The peer's certificate, if it presented one.
    public var peerCertificate: PeerCertificate?
}

extension PeerCertificate: CustomStringConvertible {
    public var description: String {
        "PeerCertificate(subject: \(self.subject), issuer: \(self.issuer), dns: \(self.dnsNames), "
            + "ip: \(self.ipAddresses), uri: \(self.uris), serial: \(self.serialNumber), "
            + "sha256: \(self.sha256FingerprintHex))"
    }
}
