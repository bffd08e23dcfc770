extension CertificateAndKey: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The certificate's subject, and `<redacted>` for the key: safe to log.
    public var description: String {
        "CertificateAndKey(certificate: \(self.certificateSummary), privateKey: \(redactedText))"
    }

    public var debugDescription: String { self.description }

    /// What `dump` and debuggers show: the certificate's PEM, never the key's.
    public var customMirror: Mirror {
        Mirror(
            self,
            children: ["certificatePEM": self.certificatePEM, "privateKeyPEM": redactedText],
            displayStyle: .struct
        )
    }

    /// The certificate's subject, or its size when it does not parse.
    private var certificateSummary: String {
        if let certificate = try? PeerCertificate(pem: self.certificatePEM) {
            return certificate.subject
        }
        return "PEM (\(self.certificatePEM.utf8.count) bytes)"
    }
}

extension CertificateAuthority: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The authority's certificate, and `<redacted>` for its key: safe to log.
    public var description: String {
        "CertificateAuthority(\(self.root))"
    }

    public var debugDescription: String { self.description }

    /// What `dump` and debuggers show: the root without its key.
    public var customMirror: Mirror {
        Mirror(self, children: ["root": self.root], displayStyle: .struct)
    }
}
