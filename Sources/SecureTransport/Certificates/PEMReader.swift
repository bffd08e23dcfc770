internal import COpenSSL

/// Where PEM text comes from, once the configuration's file-or-bytes choice is made.
enum PEMSource {
    case file(String)
    case bytes([UInt8])
}

extension TLSConfiguration.CertificateSource {
    var pemSource: PEMSource {
        switch self {
        case .file(let path): .file(path)
        case .pem(let bytes): .bytes(bytes)
        }
    }
}

extension TLSConfiguration.PrivateKeySource {
    var pemSource: PEMSource {
        switch self {
        case .file(let path): .file(path)
        case .pem(let bytes): .bytes(bytes)
        }
    }
}

/// Reads certificates and keys from PEM with OpenSSL's PEM routines.
enum PEMReader {
    /// Every certificate in the source, in order. The caller frees each with `X509_free`.
    static func certificates(from source: PEMSource, what: String) throws -> [OpaquePointer] {
        let bio = try self.openBIO(source, what: what, code: .invalidCertificate)
        defer { BIO_free(bio) }
        var certificates: [OpaquePointer] = []
        while let certificate = PEM_read_bio_X509(bio, nil, nil, nil) {
            certificates.append(certificate)
        }
        // Reading stops with "no start line" at the end of the input; anything else is damage.
        let last = ERR_peek_last_error()
        if last != 0, !(ERR_GET_LIB(last) == ERR_LIB_PEM && ERR_GET_REASON(last) == PEM_R_NO_START_LINE) {
            PEMReader.free(certificates)
            throw TLSError.fromErrorQueue(.invalidCertificate, "cannot parse the \(what)")
        }
        TLSError.clearErrorQueue()
        if certificates.isEmpty {
            throw TLSError(.invalidCertificate, "the \(what) holds no PEM certificate")
        }
        return certificates
    }

    /// Frees certificates returned by ``certificates(from:what:)``.
    static func free(_ certificates: [OpaquePointer]) {
        for certificate in certificates {
            X509_free(certificate)
        }
    }

    /// The private key in the source. The caller frees it with `EVP_PKEY_free`.
    ///
    /// A passphrase callback is always installed, so OpenSSL never prompts on a terminal for
    /// an encrypted key: without a passphrase such a key fails to load.
    static func privateKey(from source: PEMSource, passphrase: String?) throws -> OpaquePointer {
        let bio = try self.openBIO(source, what: "private key", code: .invalidPrivateKey)
        defer { BIO_free(bio) }
        var secret = Array((passphrase ?? "").utf8CString)
        defer {
            // Do not leave the passphrase lying around in freed memory.
            for index in secret.indices { secret[index] = 0 }
        }
        let key = secret.withUnsafeMutableBufferPointer { buffer in
            PEM_read_bio_PrivateKey(bio, nil, passphraseCallback, buffer.baseAddress)
        }
        guard let key else {
            let hint = passphrase == nil ? " (an encrypted key needs a passphrase)" : ""
            let detail = TLSError.drainErrorQueue().joined(separator: "; ")
            throw TLSError(.invalidPrivateKey, "cannot read the private key\(hint): \(detail)")
        }
        return key
    }

    private static func openBIO(_ source: PEMSource, what: String, code: TLSError.Code) throws -> OpaquePointer {
        switch source {
        case .file(let path):
            guard let bio = BIO_new_file(path, "r") else {
                TLSError.clearErrorQueue()
                throw TLSError(code, "cannot open the \(what) file \(path)")
            }
            return bio
        case .bytes(let bytes):
            // BIO_new_mem_buf does not copy, so the BIO is given its own copy to own.
            guard let bio = BIO_new(BIO_s_mem()) else {
                throw TLSError.fromErrorQueue(.internalError, "cannot allocate a memory BIO")
            }
            let written = bytes.withUnsafeBytes { BIO_write(bio, $0.baseAddress, Int32($0.count)) }
            guard bytes.isEmpty || written == Int32(bytes.count) else {
                BIO_free(bio)
                throw TLSError.fromErrorQueue(.internalError, "cannot buffer the \(what)")
            }
            return bio
        }
    }
}

/// Copies the passphrase handed in `userdata` into OpenSSL's buffer. An empty passphrase is
/// reported as none, so an encrypted key without one fails instead of prompting.
private let passphraseCallback:
    @convention(c) (UnsafeMutablePointer<CChar>?, CInt, CInt, UnsafeMutableRawPointer?) ->
        CInt = { buffer, size, _, userdata in
            guard let buffer, let userdata, size > 0 else { return -1 }
            let secret = userdata.assumingMemoryBound(to: CChar.self)
            var length = 0
            while secret[length] != 0 { length += 1 }
            guard length > 0, length <= Int(size) else { return -1 }
            buffer.update(from: secret, count: length)
            return CInt(length)
        }
