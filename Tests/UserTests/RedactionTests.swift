import Foundation
import SecureMessagingTesting
import Testing

/// A user who logs or dumps what holds a private key or a passphrase leaks neither: every such
/// type prints a redacted form through `description`, `debugDescription` and its mirror. Tested
/// from outside the package, as a user's code sees the types.
@Suite("No key material in descriptions, debug descriptions or mirrors")
struct RedactionTests {
    static let passphrase = "correct horse battery staple"

    /// Every way a value is commonly turned into text.
    static func texts(of value: Any) -> [String] {
        var dumped = ""
        dump(value, to: &dumped)
        return ["\(value)", String(describing: value), String(reflecting: value), dumped]
    }

    /// Whether `text` shows any of the key: its PEM markers, any 16 characters of its base64
    /// lines (but those a certificate shows as well: a PKCS #8 EC key holds the curve's OIDs and
    /// the public key, which its certificate shows too), its bytes as a dumped array (`- 45`
    /// five times for the dashes of `-----BEGIN`), or the passphrase.
    static func leaks(_ text: String, key: String, certificates: [String]) -> String? {
        if text.contains("PRIVATE KEY") { return "the PEM marker" }
        if text.contains(Self.passphrase) { return "the passphrase" }
        let body = key.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        var start = body.startIndex
        while body.distance(from: start, to: body.endIndex) >= 16 {
            let end = body.index(start, offsetBy: 16)
            let chunk = body[start..<end]
            if text.contains(chunk), !certificates.contains(where: { $0.contains(chunk) }) {
                return "the key's base64 at \(body.distance(from: body.startIndex, to: start))"
            }
            start = end
        }
        // Its bytes: dumped one per line (`- 45`), or listed (`45, 45, …`), five dashes in a row.
        if text.range(of: #"(- 45\s+){5}"#, options: .regularExpression) != nil { return "the key's bytes" }
        if text.contains("45, 45, 45, 45, 45") { return "the key's bytes" }
        return nil
    }

    static func expectNoLeak(_ value: Any, key: String, _ what: String) {
        for text in Self.texts(of: value) {
            let leak = Self.leaks(text, key: key, certificates: Self.certificatesShown(in: text))
            #expect(leak == nil, "\(what) shows \(leak ?? ""): \(text)")
        }
    }

    /// The certificates' PEM bodies that `text` shows (a mirror may show a certificate).
    static func certificatesShown(in text: String) -> [String] {
        text.components(separatedBy: "-----BEGIN CERTIFICATE-----").dropFirst().compactMap {
            $0.components(separatedBy: "-----END CERTIFICATE-----").first
        }.map { $0.replacingOccurrences(of: "\\n", with: "").replacingOccurrences(of: "\n", with: "") }
    }

    @Test("issued certificates, the authority, configurations, contexts and transports")
    func everyHolder() throws {
        let certificates = try TestCertificates()
        let authorityKey = certificates.authority.root.privateKeyPEM
        let leaf = try certificates.issue("collab-1", usage: .client)

        Self.expectNoLeak(certificates.authority, key: authorityKey, "CertificateAuthority")
        Self.expectNoLeak(certificates, key: authorityKey, "TestCertificates")
        Self.expectNoLeak(leaf, key: leaf.privateKeyPEM, "CertificateAndKey")
        Self.expectNoLeak([leaf, leaf] as [CertificateAndKey], key: leaf.privateKeyPEM, "[CertificateAndKey]")
        Self.expectNoLeak(leaf.privateKey, key: leaf.privateKeyPEM, "PrivateKeySource")
        Self.expectNoLeak(Optional(leaf) as Any, key: leaf.privateKeyPEM, "CertificateAndKey?")

        var configuration = TLSConfiguration.makeClientConfiguration(
            certificateChain: leaf.certificateChain,
            privateKey: leaf.privateKey,
            trustRoots: certificates.authority.trustRoots
        )
        Self.expectNoLeak(configuration, key: leaf.privateKeyPEM, "TLSConfiguration")
        let context = try TLSContext(configuration: configuration)
        Self.expectNoLeak(context, key: leaf.privateKeyPEM, "TLSContext")
        Self.expectNoLeak(try TLSTransport(configuration: configuration), key: leaf.privateKeyPEM, "TLSTransport")

        configuration.privateKeyPassphrase = Self.passphrase
        Self.expectNoLeak(configuration, key: leaf.privateKeyPEM, "TLSConfiguration with a passphrase")
    }

    @Test("what the redacted forms still say: the subject, the key's file, that a passphrase is set")
    func usefulStill() throws {
        let certificates = try TestCertificates()
        let leaf = try certificates.issue("collab-1", usage: .client)
        #expect("\(leaf)".contains("CN=collab-1"), "\(leaf)")
        #expect("\(leaf)".contains("<redacted>"), "\(leaf)")
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: .file("/etc/smsg/leader.pem"),
            privateKey: .file("/etc/smsg/leader.key")
        )
        configuration.privateKeyPassphrase = Self.passphrase
        var dumped = ""
        dump(configuration, to: &dumped)
        #expect(dumped.contains("/etc/smsg/leader.key"), "\(dumped)")
        #expect(dumped.contains("privateKeyPassphrase: \"<redacted>\""), "\(dumped)")
    }
}
