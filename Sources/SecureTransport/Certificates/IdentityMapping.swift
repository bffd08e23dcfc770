/// How a peer's certificate names the node it belongs to.
///
/// A server that binds sessions to certificates (smsg/1 `node_id` must equal the identity)
/// reads the identity with one of these. The default, ``firstDNSName``, takes the first DNS
/// subject alternative name, else the subject's common name.
///
/// ```swift
/// // SPIFFE IDs: spiffe://example.org/node/collab-1 is node "collab-1".
/// configuration.identityMapping = .uri(prefix: "spiffe://example.org/node/")
/// ```
public struct IdentityMapping: Sendable, Hashable, CustomStringConvertible {
    private enum Kind: Sendable, Hashable {
        case firstDNSName
        case commonName
        case uri(prefix: String)
        case custom(name: String)
    }

    private let kind: Kind
    private let map: @Sendable (PeerCertificate) -> String?

    private init(_ kind: Kind, _ map: @escaping @Sendable (PeerCertificate) -> String?) {
        self.kind = kind
        self.map = map
    }

    /// The first DNS subject alternative name, else the subject's common name.
    public static let firstDNSName = IdentityMapping(.firstDNSName) { $0.dnsNames.first ?? $0.commonName }

    /// The subject's common name only.
    public static let commonName = IdentityMapping(.commonName) { $0.commonName }

    /// The first URI subject alternative name that starts with `prefix`, without the prefix.
    ///
    /// - Parameter prefix: What the URI must start with, such as `spiffe://example.org/node/`.
    ///   Empty by default: the whole first URI is the identity.
    /// - Returns: The mapping; a certificate without such a URI has no identity.
    public static func uri(prefix: String = "") -> IdentityMapping {
        IdentityMapping(.uri(prefix: prefix)) { certificate in
            guard let uri = certificate.uris.first(where: { $0.hasPrefix(prefix) }) else { return nil }
            let identity = String(uri.dropFirst(prefix.count))
            return identity.isEmpty ? nil : identity
        }
    }

    /// Your own mapping.
    ///
    /// - Parameters:
    ///   - name: A name for it, for logs and for comparing configurations: two custom
    ///     mappings with the same name are taken to be the same.
    ///   - map: The identity of a certificate, or `nil` when it has none (the peer is refused).
    /// - Returns: The mapping.
    public static func custom(
        _ name: String,
        _ map: @escaping @Sendable (PeerCertificate) -> String?
    ) -> IdentityMapping {
        IdentityMapping(.custom(name: name), map)
    }

    /// The node `certificate` names under this mapping, if any.
    ///
    /// - Parameter certificate: The peer's certificate.
    /// - Returns: The identity, or `nil` when the certificate has none under this mapping.
    public func identity(of certificate: PeerCertificate) -> String? {
        self.map(certificate)
    }

    public static func == (lhs: IdentityMapping, rhs: IdentityMapping) -> Bool {
        lhs.kind == rhs.kind
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(self.kind)
    }

    public var description: String {
        switch self.kind {
        case .firstDNSName: "first DNS name"
        case .commonName: "common name"
        case .uri(let prefix): prefix.isEmpty ? "first URI" : "URI under \(prefix)"
        case .custom(let name): name
        }
    }
}
