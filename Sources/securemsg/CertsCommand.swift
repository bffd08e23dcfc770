import ArgumentParser
import Foundation
import SecureTransport

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `securemsg certs`: a development certificate authority and the certificates it issues.
struct CertsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs",
        abstract: "Make a certificate authority and issue certificates from it (EC P-256, OpenSSL).",
        discussion: """
            For development, tests and small deployments with their own CA. Private keys are \
            written unencrypted, readable by their owner only (0600); existing files are kept \
            unless --force is given.
            """,
        subcommands: [CertsCA.self, CertsIssue.self]
    )
}

struct CertsCA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "Make a new certificate authority: ca.pem and ca.key."
    )

    @Option(help: "The directory to write ca.pem and ca.key to.")
    var dir: String = "."

    @Option(help: "The authority's common name.")
    var name: String = "smsg development CA"

    @Option(help: "How many days the authority is valid.")
    var days: Int = 1825

    @Flag(help: "Replace ca.pem and ca.key if they exist.")
    var force = false

    func run() throws {
        guard (1...36_500).contains(self.days) else { throw ValidationError("--days must be from 1 to 36500") }
        let authority = try CertificateAuthority(commonName: self.name, validity: .seconds(self.days * 86_400))
        let files = CertificateFiles(directory: self.dir)
        try files.write(authority.root, as: "ca", force: self.force)
        print("wrote \(files.certificatePath("ca")) and \(files.keyPath("ca"))")
    }
}

struct CertsIssue: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "issue",
        abstract: "Issue a certificate and key for NAME, signed by the authority: NAME.pem and NAME.key.",
        discussion: """
            NAME is the common name and, when it is a DNS name, the first DNS name: the identity \
            smsg/1 binds a node to by default. A NAME that is not a DNS name (node ids may hold \
            _ : @) is the common name only, for a client certificate: the default mapping then \
            takes the common name. A server certificate also names localhost, 127.0.0.1 and ::1. \
            Neither --server nor --client means both.
            """
    )

    @Argument(help: "The node's name (its node_id).")
    var name: String

    @Flag(help: "For a server (a leader): extended key usage serverAuth.")
    var server = false

    @Flag(help: "For a client (a collaborator): extended key usage clientAuth.")
    var client = false

    @Option(help: "Another DNS name (repeatable).")
    var dns: [String] = []

    @Option(help: "An IP address (repeatable).")
    var ip: [String] = []

    @Option(help: "A URI, such as a SPIFFE ID (repeatable).")
    var uri: [String] = []

    @Option(help: "The directory holding ca.pem and ca.key, and where NAME.pem and NAME.key go.")
    var dir: String = "."

    @Option(help: "How many days the certificate is valid.")
    var days: Int = 365

    @Flag(help: "Replace NAME.pem and NAME.key if they exist.")
    var force = false

    func validate() throws {
        guard (1...36_500).contains(self.days) else { throw ValidationError("--days must be from 1 to 36500") }
        guard !self.name.isEmpty, !self.name.contains("/") else {
            throw ValidationError("NAME must be non-empty and hold no '/': it names the files")
        }
    }

    func run() throws {
        let files = CertificateFiles(directory: self.dir)
        let authority = try files.authority()
        var usage: CertificateUsage = []
        if self.server { usage.insert(.server) }
        if self.client { usage.insert(.client) }
        if usage.isEmpty { usage = [.server, .client] }
        let issued = try authority.issue(
            try CertificateRequest.node(
                self.name,
                usage: usage,
                dnsNames: self.dns,
                ipAddresses: self.ip,
                uris: self.uri,
                validity: .seconds(self.days * 86_400)
            )
        )
        try files.write(issued, as: self.name, force: self.force)
        print("wrote \(files.certificatePath(self.name)) and \(files.keyPath(self.name))")
    }
}

/// Certificates and keys as files in one directory: NAME.pem (0644) and NAME.key (0600).
struct CertificateFiles {
    var directory: String

    func certificatePath(_ name: String) -> String { "\(self.directory)/\(name).pem" }
    func keyPath(_ name: String) -> String { "\(self.directory)/\(name).key" }

    func exists(_ name: String) -> Bool {
        FileManager.default.fileExists(atPath: self.certificatePath(name))
            && FileManager.default.fileExists(atPath: self.keyPath(name))
    }

    /// The authority in ca.pem and ca.key.
    func authority() throws -> CertificateAuthority {
        guard self.exists("ca") else {
            throw ValidationError(
                "no certificate authority in \(self.directory) (ca.pem and ca.key); make one with: securemsg certs ca"
                    + (self.directory == "." ? "" : " --dir \(self.directory)")
            )
        }
        return try CertificateAuthority(
            root: CertificateAndKey(
                certificatePEM: try String(contentsOfFile: self.certificatePath("ca"), encoding: .utf8),
                privateKeyPEM: try String(contentsOfFile: self.keyPath("ca"), encoding: .utf8)
            )
        )
    }

    /// Writes NAME.pem and NAME.key; the key is created 0600, never readable by others even
    /// for a moment.
    func write(_ pair: CertificateAndKey, as name: String, force: Bool) throws {
        try self.makeDirectory()
        let targets = [self.certificatePath(name), self.keyPath(name)]
        for path in targets where FileManager.default.fileExists(atPath: path) {
            guard force else { throw ValidationError("\(path) exists; use --force to replace it") }
            try FileManager.default.removeItem(atPath: path)
        }
        try Self.create(targets[1], contents: pair.privateKeyPEM, mode: 0o600)
        try Self.create(targets[0], contents: pair.certificatePEM, mode: 0o644)
    }

    /// Makes the directory (and its parents) unless it exists.
    func makeDirectory() throws {
        do {
            try FileManager.default.createDirectory(atPath: self.directory, withIntermediateDirectories: true)
        } catch {
            throw ValidationError(
                "cannot create the directory \(self.directory): \(SecureMsg.sentence(error, namingPath: false))"
            )
        }
    }

    private static func create(_ path: String, contents: String, mode: mode_t) throws {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL, mode)
        guard descriptor >= 0 else {
            throw ValidationError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        let handle = FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
        try handle.write(contentsOf: Data(contents.utf8))
        try handle.close()
    }
}
