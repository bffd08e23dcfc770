import Foundation
import NIOConcurrencyHelpers
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Real etcd (Debian's `etcd-server`, installed by scripts/ensure-deps.sh) on loopback ports:
/// one member or several, each a child process with its own data directory, stopped and
/// removed when this object goes (or by ``stop()``).
public final class EtcdCluster: Sendable {
    /// Each member's client URL, in member order.
    public let clientURLs: [String]
    /// The client URLs joined by commas, as `--etcd` takes them.
    public var endpoints: String { self.clientURLs.joined(separator: ",") }

    private let clientPorts: [Int]
    private let members: NIOLockedValueBox<[ChildProcess?]>
    private let directory: String

    /// Starts `size` members and returns once every one of them is healthy. With `tls`, the
    /// members serve clients over `https` only and require a client certificate issued by
    /// `tls.ca` (`--client-cert-auth`), as production etcd does; their health is read on a
    /// plain metrics port of their own.
    public init(members size: Int = 1, tls: EtcdTLSFiles? = nil) async throws {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        guard path.split(separator: ":").contains(where: { FileManager.default.isExecutableFile(atPath: "\($0)/etcd") })
        else {
            throw EtcdClusterError(message: "etcd is not installed: scripts/ensure-deps.sh installs etcd-server")
        }
        // In memory where the system has it: etcd syncs every write, and a disk shared with a
        // whole test run makes that slow.
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let directory = "\(base)/smsg-etcd-\(UUID())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // Ports taken from the system and let go just before etcd takes them.
        var reserved: [ClosedPort] = []
        for _ in 0..<(3 * size) {
            reserved.append(ClosedPort())
        }
        let clientPorts = (0..<size).map { reserved[3 * $0].port }
        let peerPorts = (0..<size).map { reserved[3 * $0 + 1].port }
        let healthPorts = tls == nil ? clientPorts : (0..<size).map { reserved[3 * $0 + 2].port }
        reserved.removeAll()
        let scheme = tls == nil ? "http" : "https"
        var security: [String] = []
        if let tls {
            security = [
                "--cert-file", tls.certificate, "--key-file", tls.key, "--trusted-ca-file", tls.ca,
                "--client-cert-auth",
            ]
        }
        let cluster = (0..<size).map { "m\($0)=http://127.0.0.1:\(peerPorts[$0])" }.joined(separator: ",")
        var members: [ChildProcess?] = []
        for index in 0..<size {
            members.append(
                try ChildProcess(
                    "etcd",
                    [
                        "--name", "m\(index)", "--data-dir", "\(directory)/m\(index)",
                        "--listen-client-urls", "\(scheme)://127.0.0.1:\(clientPorts[index])",
                        "--advertise-client-urls", "\(scheme)://127.0.0.1:\(clientPorts[index])",
                        "--listen-peer-urls", "http://127.0.0.1:\(peerPorts[index])",
                        "--initial-advertise-peer-urls", "http://127.0.0.1:\(peerPorts[index])",
                        "--initial-cluster", cluster, "--initial-cluster-state", "new",
                        "--initial-cluster-token", "smsg-test", "--heartbeat-interval", "20",
                        "--election-timeout", "200", "--log-level", "error",
                    ] + security
                        + (tls == nil ? [] : ["--listen-metrics-urls", "http://127.0.0.1:\(healthPorts[index])"])
                )
            )
        }
        self.clientPorts = clientPorts
        self.clientURLs = clientPorts.map { "\(scheme)://127.0.0.1:\($0)" }
        self.members = NIOLockedValueBox(members)
        self.directory = directory
        let deadline = ContinuousClock.now + .seconds(30)
        for port in healthPorts {
            while await httpGetOffPool(port: port, path: "/health")?.contains("{\"health\":\"true\"}") != true {
                guard ContinuousClock.now < deadline else {
                    let output = self.members.withLockedValue { $0.compactMap { $0?.output }.joined(separator: "\n") }
                    self.stop()
                    throw EtcdClusterError(message: "etcd did not become healthy within 30 s:\n\(output)")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    deinit {
        self.stop()
    }

    /// Kills member `index` (SIGKILL) and returns once it is gone.
    public func kill(member index: Int) async {
        let member = self.members.withLockedValue { members in
            defer { members[index] = nil }
            return members[index]
        }
        guard let member else { return }
        member.signal(SIGKILL)
        let deadline = ContinuousClock.now + .seconds(5)
        while member.isRunning, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Kills every member (without waiting) and removes the data.
    public func stop() {
        let members = self.members.withLockedValue { members in
            defer { members = members.map { _ in nil } }
            return members
        }
        for member in members {
            member?.signal(SIGKILL)
        }
        try? FileManager.default.removeItem(atPath: self.directory)
    }
}

/// ``httpGet(port:path:)`` on NIO's thread pool: it blocks, and the cooperative pool has only
/// as many threads as cores.
public func httpGetOffPool(port: Int, path: String) async -> String? {
    try? await NIOThreadPool.singleton.runIfActive { httpGet(port: port, path: path) }
}

/// The PEM files of etcd's TLS: its CA (which must have issued the clients' certificates too),
/// and its own certificate and key. The certificate needs clientAuth as well as serverAuth:
/// etcd's JSON gateway dials etcd itself with it.
public struct EtcdTLSFiles: Sendable {
    public var ca: String
    public var certificate: String
    public var key: String

    public init(ca: String, certificate: String, key: String) {
        self.ca = ca
        self.certificate = certificate
        self.key = key
    }
}

public struct EtcdClusterError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { self.message }
}

/// A blocking HTTP/1.0 GET on 127.0.0.1 with a one-second receive timeout: the whole answer,
/// or `nil`.
public func httpGet(port: Int, path: String) -> String? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 1, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard connected == 0 else { return nil }
    let request = Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
    guard send(fd, request, request.count, 0) == request.count else { return nil }
    var answer: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = recv(fd, &chunk, chunk.count, 0)
        if count <= 0 { break }
        answer += chunk[0..<count]
    }
    return String(decoding: answer, as: UTF8.self)
}
