internal import COpenSSL

/// Makes keys and certificates with OpenSSL's X.509 API, for ``CertificateAuthority``.
enum CertificateBuilder {
    /// Clock skew allowed for: certificates start this many seconds before now.
    static let backdate = 300

    static func makeAuthority(commonName: String, validity: Duration) throws -> CertificateAndKey {
        try Self.checkCommonName(commonName)
        let key = try Self.makeKey()
        defer { EVP_PKEY_free(key) }
        let certificate = try Self.makeCertificate(commonName: commonName, validity: validity, key: key)
        defer { X509_free(certificate) }
        guard X509_set_issuer_name(certificate, X509_get_subject_name(certificate)) == 1 else {
            throw TLSError.fromErrorQueue(.internalError, "cannot set the certificate's issuer")
        }
        try Self.addExtensions(
            [
                (NID_basic_constraints, "critical,CA:TRUE,pathlen:0"),
                (NID_key_usage, "critical,keyCertSign,cRLSign"),
                (NID_subject_key_identifier, "hash"),
            ],
            to: certificate,
            issuer: certificate
        )
        try Self.sign(certificate, with: key)
        return CertificateAndKey(
            certificatePEM: try Self.pem(certificate: certificate),
            privateKeyPEM: try Self.pem(privateKey: key)
        )
    }

    static func issue(_ request: CertificateRequest, by root: CertificateAndKey) throws -> CertificateAndKey {
        try Self.checkCommonName(request.commonName)
        guard !request.usage.isEmpty else {
            throw TLSError(.invalidCertificate, "a certificate needs a usage: server, client or both")
        }
        let alternativeNames = try Self.alternativeNames(request)
        let authorityCertificates = try PEMReader.certificates(
            from: .bytes(Array(root.certificatePEM.utf8)),
            what: "CA certificate"
        )
        defer { PEMReader.free(authorityCertificates) }
        let authority = authorityCertificates[0]
        let authorityKey = try PEMReader.privateKey(from: .bytes(Array(root.privateKeyPEM.utf8)), passphrase: nil)
        defer { EVP_PKEY_free(authorityKey) }

        let key = try Self.makeKey()
        defer { EVP_PKEY_free(key) }
        let certificate = try Self.makeCertificate(commonName: request.commonName, validity: request.validity, key: key)
        defer { X509_free(certificate) }
        guard X509_set_issuer_name(certificate, X509_get_subject_name(authority)) == 1 else {
            throw TLSError.fromErrorQueue(.internalError, "cannot set the certificate's issuer")
        }
        var usages: [String] = []
        if request.usage.contains(.server) { usages.append("serverAuth") }
        if request.usage.contains(.client) { usages.append("clientAuth") }
        var extensions: [(Int32, String)] = [
            (NID_basic_constraints, "critical,CA:FALSE"),
            (NID_key_usage, "critical,digitalSignature"),
            (NID_ext_key_usage, usages.joined(separator: ",")),
            (NID_subject_key_identifier, "hash"),
            (NID_authority_key_identifier, "keyid"),
        ]
        if !alternativeNames.isEmpty {
            extensions.append((NID_subject_alt_name, alternativeNames))
        }
        try Self.addExtensions(extensions, to: certificate, issuer: authority)
        try Self.sign(certificate, with: authorityKey)
        return CertificateAndKey(
            certificatePEM: try Self.pem(certificate: certificate),
            privateKeyPEM: try Self.pem(privateKey: key)
        )
    }

    static func checkAuthority(_ root: CertificateAndKey, passphrase: String?) throws {
        let certificates = try PEMReader.certificates(
            from: .bytes(Array(root.certificatePEM.utf8)),
            what: "CA certificate"
        )
        defer { PEMReader.free(certificates) }
        let key = try PEMReader.privateKey(from: .bytes(Array(root.privateKeyPEM.utf8)), passphrase: passphrase)
        defer { EVP_PKEY_free(key) }
        guard X509_check_private_key(certificates[0], key) == 1 else {
            TLSError.clearErrorQueue()
            throw TLSError(.invalidPrivateKey, "the CA key does not belong to the CA certificate")
        }
        guard X509_check_ca(certificates[0]) != 0 else {
            throw TLSError(.invalidCertificate, "the CA certificate is not a certificate authority")
        }
    }

    // MARK: - Pieces

    /// A fresh EC P-256 key. The caller frees it with `EVP_PKEY_free`.
    private static func makeKey() throws -> OpaquePointer {
        guard let context = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else {
            throw TLSError.fromErrorQueue(.internalError, "cannot make an EC key context")
        }
        defer { EVP_PKEY_CTX_free(context) }
        var key: OpaquePointer?
        guard EVP_PKEY_keygen_init(context) == 1, EVP_PKEY_CTX_set_group_name(context, "P-256") == 1,
            EVP_PKEY_generate(context, &key) == 1, let key
        else {
            throw TLSError.fromErrorQueue(.internalError, "cannot generate a P-256 key")
        }
        return key
    }

    /// A version 3 certificate with a random serial, the validity, the subject and the public
    /// key; no issuer, extensions or signature yet. The caller frees it with `X509_free`.
    private static func makeCertificate(
        commonName: String,
        validity: Duration,
        key: OpaquePointer
    ) throws
        -> OpaquePointer
    {
        let seconds = validity.components.seconds
        guard seconds > 0 else {
            throw TLSError(.invalidCertificate, "a certificate's validity must be positive, not \(validity)")
        }
        guard let certificate = X509_new() else {
            throw TLSError.fromErrorQueue(.internalError, "cannot allocate a certificate")
        }
        do {
            guard X509_set_version(certificate, 2) == 1 else {
                throw TLSError.fromErrorQueue(.internalError, "cannot set the certificate version")
            }
            try Self.setRandomSerial(certificate)
            guard X509_gmtime_adj(X509_getm_notBefore(certificate), -Self.backdate) != nil,
                X509_gmtime_adj(X509_getm_notAfter(certificate), Int(seconds)) != nil
            else {
                throw TLSError.fromErrorQueue(.internalError, "cannot set the certificate's validity")
            }
            let name = X509_get_subject_name(certificate)
            let added = Array(commonName.utf8).withUnsafeBufferPointer { bytes in
                X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, bytes.baseAddress, Int32(bytes.count), -1, 0)
            }
            guard added == 1 else {
                throw TLSError.fromErrorQueue(.invalidCertificate, "cannot use \"\(commonName)\" as a common name")
            }
            guard X509_set_pubkey(certificate, key) == 1 else {
                throw TLSError.fromErrorQueue(.internalError, "cannot set the certificate's public key")
            }
            return certificate
        } catch {
            X509_free(certificate)
            throw error
        }
    }

    /// A 127-bit number with its top bit set (126 random bits): positive, unique in practice,
    /// and within RFC 5280's 20 octets.
    private static func setRandomSerial(_ certificate: OpaquePointer) throws {
        guard let number = BN_new() else {
            throw TLSError.fromErrorQueue(.internalError, "cannot allocate a serial number")
        }
        defer { BN_free(number) }
        guard BN_rand(number, 127, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) == 1,
            BN_to_ASN1_INTEGER(number, X509_get_serialNumber(certificate)) != nil
        else {
            throw TLSError.fromErrorQueue(.internalError, "cannot make a serial number")
        }
    }

    private static func addExtensions(
        _ extensions: [(Int32, String)],
        to certificate: OpaquePointer,
        issuer: OpaquePointer
    ) throws {
        var context = X509V3_CTX()
        X509V3_set_ctx(&context, issuer, certificate, nil, nil, 0)
        for (nid, value) in extensions {
            guard let made = X509V3_EXT_nconf_nid(nil, &context, nid, value) else {
                let name = String(cString: OBJ_nid2sn(nid))
                throw TLSError.fromErrorQueue(.invalidCertificate, "cannot make the \(name) extension \"\(value)\"")
            }
            defer { X509_EXTENSION_free(made) }
            guard X509_add_ext(certificate, made, -1) == 1 else {
                throw TLSError.fromErrorQueue(.internalError, "cannot add an extension to the certificate")
            }
        }
    }

    private static func sign(_ certificate: OpaquePointer, with key: OpaquePointer) throws {
        guard X509_sign(certificate, key, EVP_sha256()) > 0 else {
            throw TLSError.fromErrorQueue(.internalError, "cannot sign the certificate")
        }
    }

    static func pem(certificate: OpaquePointer) throws -> String {
        try Self.writePEM { PEM_write_bio_X509($0, certificate) }
    }

    static func pem(privateKey: OpaquePointer) throws -> String {
        try Self.writePEM { PEM_write_bio_PrivateKey($0, privateKey, nil, nil, 0, nil, nil) }
    }

    private static func writePEM(_ write: (OpaquePointer) -> Int32) throws -> String {
        guard let bio = BIO_new(BIO_s_mem()) else {
            throw TLSError.fromErrorQueue(.internalError, "cannot allocate a memory BIO")
        }
        defer { BIO_free(bio) }
        guard write(bio) == 1 else {
            throw TLSError.fromErrorQueue(.internalError, "cannot write PEM")
        }
        var data: UnsafeMutablePointer<CChar>?
        let length = smsg_BIO_get_mem_data(bio, &data)
        guard let data, length > 0 else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
    }

    // MARK: - Checking names

    private static func checkCommonName(_ name: String) throws {
        guard !name.isEmpty, name.utf8.count <= 64, !name.contains(where: { $0.isNewline }) else {
            throw TLSError(.invalidCertificate, "a common name must be 1 to 64 bytes on one line, not \"\(name)\"")
        }
    }

    /// The subjectAltName value in OpenSSL's configuration syntax. Every name is checked
    /// first, so no name can smuggle a comma-separated entry of its own into the list.
    private static func alternativeNames(_ request: CertificateRequest) throws -> String {
        var entries: [String] = []
        for name in request.dnsNames {
            guard Self.isDNSName(name) else {
                throw TLSError(.invalidCertificate, "\"\(name)\" is not a DNS name a certificate can hold")
            }
            entries.append("DNS:\(name)")
        }
        for address in request.ipAddresses {
            // a2i_IPADDRESS forgives trailing text, and the value list ends at a newline: only
            // the characters of an address may pass.
            let addressBytes = address.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x46) || (byte >= 0x61 && byte <= 0x66)
                    || byte == 0x2E || byte == 0x3A
            }
            guard addressBytes, let parsed = a2i_IPADDRESS(address) else {
                TLSError.clearErrorQueue()
                throw TLSError(.invalidCertificate, "\"\(address)\" is not an IPv4 or IPv6 address")
            }
            ASN1_OCTET_STRING_free(parsed)
            entries.append("IP:\(address)")
        }
        for uri in request.uris {
            guard Self.isURI(uri) else {
                throw TLSError(.invalidCertificate, "\"\(uri)\" is not a URI (scheme:rest, no spaces or commas)")
            }
            entries.append("URI:\(uri)")
        }
        return entries.joined(separator: ",")
    }

    /// Letters, digits and hyphens in labels of 1 to 63 bytes, 253 bytes in all; the first
    /// label may be `*`.
    static func isDNSName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        for (index, label) in labels.enumerated() {
            if index == 0, label == "*", labels.count > 1 { continue }
            guard (1...63).contains(label.utf8.count), label.first != "-", label.last != "-",
                label.utf8.allSatisfy({ byte in
                    (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                        || byte == 0x2D
                })
            else { return false }
        }
        return true
    }

    /// A scheme (a letter, then letters, digits, `+`, `-`, `.`), a colon, and printable ASCII
    /// without spaces or commas.
    static func isURI(_ uri: String) -> Bool {
        guard let colon = uri.firstIndex(of: ":"), colon != uri.startIndex, uri.index(after: colon) != uri.endIndex
        else { return false }
        let scheme = uri[..<colon].utf8
        guard let first = scheme.first, (first >= 0x41 && first <= 0x5A) || (first >= 0x61 && first <= 0x7A),
            scheme.allSatisfy({ byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                    || byte == 0x2B || byte == 0x2D || byte == 0x2E
            })
        else { return false }
        return uri.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != 0x2C }
    }
}
