extension TLSConfiguration: CustomStringConvertible {
    /// A readable summary that never includes key material or the passphrase.
    public var description: String {
        var parts = ["role: \(self.role)"]
        switch self.certificateChain {
        case .file(let path): parts.append("certificateChain: \(path)")
        case .pem: parts.append("certificateChain: <PEM>")
        case nil: break
        }
        switch self.privateKey {
        case .file(let path): parts.append("privateKey: \(path)")
        case .pem: parts.append("privateKey: <redacted>")
        case nil: break
        }
        if self.privateKeyPassphrase != nil {
            parts.append("privateKeyPassphrase: <redacted>")
        }
        if let roots = self.trustRoots {
            switch roots {
            case .system: parts.append("trustRoots: system")
            case .file(let path): parts.append("trustRoots: file \(path)")
            case .directory(let path): parts.append("trustRoots: directory \(path)")
            case .pem: parts.append("trustRoots: <PEM>")
            }
        }
        parts.append("verifyPeer: \(self.verifyPeer)")
        parts.append("clientAuthentication: \(self.clientAuthentication)")
        parts.append("versions: \(self.minimumVersion)...\(self.maximumVersion)")
        parts.append("alpn: \(self.applicationProtocols)")
        parts.append("sessionResumption: \(self.sessionResumption)")
        if let crlFile = self.crlFile {
            parts.append("crlFile: \(crlFile)")
        }
        if let keyLogFile = self.keyLogFile {
            parts.append("keyLogFile: \(keyLogFile) (TLS SECRETS ARE BEING LOGGED)")
        }
        return "TLSConfiguration(\(parts.joined(separator: ", ")))"
    }
}

extension TLSConfiguration: CustomDebugStringConvertible {
    public var debugDescription: String { self.description }
}
