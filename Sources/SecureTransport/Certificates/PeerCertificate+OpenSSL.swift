internal import COpenSSL

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

extension PeerCertificate {
    /// Reads the first certificate in PEM text, to see what it holds.
    ///
    /// - Parameter pem: One or more certificates in PEM; the first is read.
    /// - Throws: ``TLSError`` with code ``TLSError/Code/invalidCertificate`` when the text holds
    ///   no certificate.
    public init(pem: String) throws {
        let certificates = try PEMReader.certificates(from: .bytes(Array(pem.utf8)), what: "certificate")
        defer { PEMReader.free(certificates) }
        self.init(x509: certificates[0])
    }

    /// Reads the fields of an OpenSSL `X509`. Does not take ownership.
    init(x509 certificate: OpaquePointer) {
        self.init(
            subject: Self.name(X509_get_subject_name(certificate)),
            issuer: Self.name(X509_get_issuer_name(certificate)),
            commonName: Self.commonName(of: certificate),
            dnsNames: [],
            ipAddresses: [],
            sha256Fingerprint: Self.fingerprint(of: certificate),
            derBytes: Self.der(of: certificate)
        )
        (self.dnsNames, self.ipAddresses, self.uris) = Self.alternativeNames(of: certificate)
        self.serialNumber = Self.serialNumber(of: certificate)
        self.notValidBefore = Self.date(X509_get0_notBefore(certificate))
        self.notValidAfter = Self.date(X509_get0_notAfter(certificate))
        TLSError.clearErrorQueue()
    }

    private static func name(_ name: OpaquePointer?) -> String {
        guard let name, let bio = BIO_new(BIO_s_mem()) else { return "" }
        defer { BIO_free(bio) }
        let flags = smsg_XN_FLAG_RFC2253 & ~UInt(ASN1_STRFLGS_ESC_MSB)
        guard X509_NAME_print_ex(bio, name, 0, flags) >= 0 else { return "" }
        return Self.contents(of: bio)
    }

    private static func contents(of bio: OpaquePointer) -> String {
        var data: UnsafeMutablePointer<CChar>?
        let length = smsg_BIO_get_mem_data(bio, &data)
        guard let data, length > 0 else { return "" }
        let bytes = UnsafeRawBufferPointer(start: data, count: length)
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func commonName(of certificate: OpaquePointer) -> String? {
        guard let subject = X509_get_subject_name(certificate) else { return nil }
        let index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1)
        guard index >= 0, let entry = X509_NAME_get_entry(subject, index),
            let data = X509_NAME_ENTRY_get_data(entry)
        else { return nil }
        return Self.utf8(data)
    }

    private static func utf8(_ string: UnsafePointer<ASN1_STRING>) -> String? {
        var out: UnsafeMutablePointer<UInt8>?
        let length = ASN1_STRING_to_UTF8(&out, string)
        guard length >= 0, let out else { return nil }
        defer { CRYPTO_free(out, #fileID, #line) }
        return String(decoding: UnsafeBufferPointer(start: out, count: Int(length)), as: UTF8.self)
    }

    private static func serialNumber(of certificate: OpaquePointer) -> String {
        guard let serial = X509_get0_serialNumber(certificate), let number = ASN1_INTEGER_to_BN(serial, nil) else {
            return ""
        }
        defer { BN_free(number) }
        guard let hex = BN_bn2hex(number) else { return "" }
        defer { CRYPTO_free(hex, #fileID, #line) }
        return String(cString: hex)
    }

    /// An ASN.1 time as a date: its distance from the Unix epoch, as OpenSSL computes it.
    private static func date(_ time: UnsafePointer<ASN1_TIME>?) -> Date {
        guard let time, let epoch = ASN1_TIME_set(nil, 0) else { return Date(timeIntervalSince1970: 0) }
        defer { ASN1_STRING_free(epoch) }
        var days: Int32 = 0
        var seconds: Int32 = 0
        guard ASN1_TIME_diff(&days, &seconds, epoch, time) == 1 else { return Date(timeIntervalSince1970: 0) }
        return Date(timeIntervalSince1970: Double(days) * 86_400 + Double(seconds))
    }

    private static func alternativeNames(of certificate: OpaquePointer) -> ([String], [String], [String]) {
        guard let raw = X509_get_ext_d2i(certificate, NID_subject_alt_name, nil, nil) else { return ([], [], []) }
        let names = OpaquePointer(raw)
        defer { smsg_GENERAL_NAMES_free(names) }
        var dns: [String] = []
        var addresses: [String] = []
        var uris: [String] = []
        for index in 0..<smsg_sk_GENERAL_NAME_num(names) {
            guard let name = smsg_sk_GENERAL_NAME_value(names, index),
                let value = smsg_GENERAL_NAME_string(name)
            else { continue }
            let bytes = UnsafeBufferPointer(start: ASN1_STRING_get0_data(value), count: Int(ASN1_STRING_length(value)))
            switch smsg_GENERAL_NAME_type(name) {
            case GEN_DNS:
                dns.append(String(decoding: bytes, as: UTF8.self))
            case GEN_IPADD:
                if let text = Self.ipAddressText(bytes) {
                    addresses.append(text)
                }
            case GEN_URI:
                uris.append(String(decoding: bytes, as: UTF8.self))
            default:
                continue
            }
        }
        return (dns, addresses, uris)
    }

    private static func ipAddressText(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
        switch bytes.count {
        case 4:
            return bytes.map { String($0) }.joined(separator: ".")
        case 16:
            // Full form without zero compression: unambiguous and easy to compare.
            return stride(from: 0, to: 16, by: 2).map {
                String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16)
            }
            .joined(separator: ":")
        default:
            return nil
        }
    }

    private static func fingerprint(of certificate: OpaquePointer) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard X509_digest(certificate, EVP_sha256(), &digest, &length) == 1 else { return [] }
        return Array(digest.prefix(Int(length)))
    }

    private static func der(of certificate: OpaquePointer) -> [UInt8] {
        let length = i2d_X509(certificate, nil)
        guard length > 0 else { return [] }
        var bytes = [UInt8](repeating: 0, count: Int(length))
        bytes.withUnsafeMutableBufferPointer { buffer in
            var cursor = buffer.baseAddress
            _ = i2d_X509(certificate, &cursor)
        }
        return bytes
    }
}

extension TLSConnection {
    /// What the handshake agreed on. Call only after the handshake completed.
    var handshakeInfo: TLSHandshakeInfo {
        let version: TLSConfiguration.Version = SSL_version(self.ssl) == TLS1_3_VERSION ? .tls13 : .tls12
        let cipher = SSL_get_current_cipher(self.ssl).flatMap { SSL_CIPHER_standard_name($0) }
        var alpnData: UnsafePointer<UInt8>?
        var alpnLength: UInt32 = 0
        SSL_get0_alpn_selected(self.ssl, &alpnData, &alpnLength)
        let alpn = alpnData.map {
            String(decoding: UnsafeBufferPointer(start: $0, count: Int(alpnLength)), as: UTF8.self)
        }
        var peer: PeerCertificate?
        if let certificate = SSL_get1_peer_certificate(self.ssl) {
            peer = PeerCertificate(x509: certificate)
            X509_free(certificate)
        }
        return TLSHandshakeInfo(
            version: version,
            cipherSuite: cipher.map { String(cString: $0) } ?? "",
            applicationProtocol: alpn,
            sessionReused: SSL_session_reused(self.ssl) == 1,
            peerCertificate: peer
        )
    }
}
