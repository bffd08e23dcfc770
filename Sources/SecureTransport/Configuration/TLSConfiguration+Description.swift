extension TLSConfiguration: CustomStringConvertible {
    /// A readable summary that never includes key material or the passphrase.
    public var description: String {
        "TLSConfiguration(\(self.summary.map { "\($0.label): \($0.value)" }.joined(separator: ", ")))"
    }

    /// The fields a description and a mirror show, each safe to log.
    private var summary: [(label: String, value: String)] {
        var parts = [("role", "\(self.role)")]
        if let chain = self.certificateChain {
            parts.append(("certificateChain", chain.description))
        }
        if let key = self.privateKey {
            parts.append(("privateKey", key.description))
        }
        if self.privateKeyPassphrase != nil {
            parts.append(("privateKeyPassphrase", redactedText))
        }
        if let roots = self.trustRoots {
            parts.append(("trustRoots", roots.description))
        }
        parts.append(("verifyPeer", "\(self.verifyPeer)"))
        parts.append(("clientAuthentication", "\(self.clientAuthentication)"))
        parts.append(("versions", "\(self.minimumVersion)...\(self.maximumVersion)"))
        parts.append(("alpn", "\(self.applicationProtocols)"))
        parts.append(("sessionResumption", "\(self.sessionResumption)"))
        if let crlFile = self.crlFile {
            parts.append(("crlFile", crlFile))
        }
        if let keyLogFile = self.keyLogFile {
            parts.append(("keyLogFile", "\(keyLogFile) (TLS SECRETS ARE BEING LOGGED)"))
        }
        return parts
    }
}

extension TLSConfiguration: CustomDebugStringConvertible {
    public var debugDescription: String { self.description }
}

extension TLSConfiguration: CustomReflectable {
    /// What `dump` and debuggers show: the summary's fields, never the key or the passphrase.
    public var customMirror: Mirror {
        Mirror(self, children: self.summary.map { (label: $0.label, value: $0.value as Any) }, displayStyle: .struct)
    }
}

/// What a description shows in place of a secret.
let redactedText = "<redacted>"

extension TLSConfiguration.PrivateKeySource: CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    /// The file's path, or `<redacted>` for a key held in memory.
    public var description: String {
        switch self {
        case .file(let path): "file \(path)"
        case .pem: "PEM \(redactedText)"
        }
    }

    public var debugDescription: String { self.description }

    /// What `dump` shows: the description alone, never the key's bytes.
    public var customMirror: Mirror {
        Mirror(self, children: ["source": self.description], displayStyle: .enum)
    }
}

extension TLSConfiguration.CertificateSource: CustomStringConvertible {
    /// The file's path, or the size of a chain held in memory.
    public var description: String {
        switch self {
        case .file(let path): "file \(path)"
        case .pem(let bytes): "PEM (\(bytes.count) bytes)"
        }
    }
}

extension TLSConfiguration.TrustRoots: CustomStringConvertible {
    /// Where the roots come from.
    public var description: String {
        switch self {
        case .system: "system"
        case .file(let path): "file \(path)"
        case .directory(let path): "directory \(path)"
        case .pem(let bytes): "PEM (\(bytes.count) bytes)"
        }
    }
}
