import ArgumentParser
import Histogram
import Messaging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SecureTransport
import ToolSupport

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `securemsg bench client`: the load generator of the shared bench tool's workloads, over
/// smsg/1 (one JSON line on stdout, progress on stderr).
struct BenchClient: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client",
        abstract: "Drive a bench server with one workload and print one JSON line of results.",
        discussion: """
            Workloads (defaults as in the shared bench tool):
              echo       C=16 connections, window=32 messages in flight each, 64-byte bodies
              bulk       C=4, window=8, 65,536-byte bodies
              handshake  C=8 loops of: connect, full TLS 1.3 handshake, HELLO, one 64-byte
                         request and its answer, close
              resume     handshake with TLS 1.3 session resumption
              idle       open --count sessions (at most C=64 opening at once), one request each,
                         then hold them until stdin closes (or --hold seconds)
            TLS is 1.3 only with TLS_AES_128_GCM_SHA256 and X25519, as the peer stacks use.
            """
    )

    enum Workload: String, ExpressibleByArgument, CaseIterable {
        case echo, bulk, handshake, resume, idle
    }

    @OptionGroup var connection: ClientConnectionOptions

    @Option(help: "The name the server's certificate must carry (default: the host).")
    var serverName: String?

    @Option(help: "echo, bulk, handshake, resume or idle.")
    var workload: Workload

    @Option(help: "Connections (echo 16, bulk 4, handshake/resume 8 loops, idle 64 opening at once).")
    var connections: Int?

    @Option(help: "Messages in flight per connection (echo 32, bulk 8).")
    var window: Int?

    @Option(help: "Body bytes per message (echo 64, bulk 65536, handshake/resume/idle 64).")
    var size: Int?

    @Option(help: "Measured seconds.")
    var duration: Double = 5

    @Option(help: "Warmup seconds before measuring.")
    var warmup: Double = 1

    @Option(help: "idle: sessions to open.")
    var count: Int = 2000

    @Option(help: "idle: seconds to hold the sessions (default: until stdin closes).")
    var hold: Double?

    @Option(help: "Event-loop threads (default: the number of cores).")
    var threads: Int = System.coreCount

    func validate() throws {
        if self.connection.plaintext, self.workload == .resume {
            throw ValidationError("--workload resume needs TLS")
        }
        for (name, value) in [("--connections", self.connections), ("--window", self.window)] {
            if let value, value < 1 { throw ValidationError("\(name) must be at least 1") }
        }
        if let size = self.size, size < 0 || size > Frame.defaultMaxFrame - 2 {
            throw ValidationError("--size must be from 0 to \(Frame.defaultMaxFrame - 2)")
        }
        guard self.duration > 0, self.warmup >= 0 else {
            throw ValidationError("--duration must be positive and --warmup not negative")
        }
        guard self.count >= 1 else { throw ValidationError("--count must be at least 1") }
        guard self.threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }

    func run() async throws {
        let address = try self.connection.address
        let group = MultiThreadedEventLoopGroup(numberOfThreads: self.threads)
        let bench = BenchRun(
            host: address.host,
            port: address.port,
            serverName: self.serverName ?? address.host,
            group: group,
            transport: try self.makeTransport(resumption: self.workload == .resume),
            tls: !self.connection.plaintext,
            mtls: !self.connection.plaintext && self.connection.cert != nil,
            warmup: self.warmup,
            duration: self.duration
        )
        let result: BenchResult
        switch self.workload {
        case .echo:
            result = try await bench.stream(
                name: "echo",
                connections: self.connections ?? 16,
                window: self.window ?? 32,
                size: self.size ?? 64
            )
        case .bulk:
            result = try await bench.stream(
                name: "bulk",
                connections: self.connections ?? 4,
                window: self.window ?? 8,
                size: self.size ?? 65_536
            )
        case .handshake, .resume:
            result = try await bench.handshakes(
                name: self.workload.rawValue,
                loops: self.connections ?? 8,
                size: self.size ?? 64
            )
        case .idle:
            let idle = try await bench.openIdle(
                count: self.count,
                parallel: self.connections ?? 64,
                size: self.size ?? 64
            )
            idle.result.print()
            if let hold = self.hold {
                try await Task.sleep(for: .milliseconds(Int(hold * 1000)))
            } else {
                await waitForEndOfInput()
            }
            await idle.close()
            try await group.shutdownGracefully()
            return
        }
        result.print()
        try await group.shutdownGracefully()
    }

    /// TLS 1.3 only, TLS_AES_128_GCM_SHA256 and X25519, as the peer stacks use.
    private func makeTransport(resumption: Bool) throws -> any MessagingTransport {
        try self.connection.makeTransport { tls in
            tls.minimumVersion = .tls13
            tls.tls13CipherSuites = "TLS_AES_128_GCM_SHA256"
            tls.groups = "X25519"
            tls.sessionResumption = resumption
        }
    }
}

/// Monotonic nanoseconds.
@inline(__always)
func benchNanos() -> UInt64 {
    NIODeadline.now().uptimeNanoseconds
}

typealias LatencyHistogram = Histogram<UInt64>

/// Nanoseconds, from 1 ns to 120 s, 3 significant digits (as the peers record them).
func makeLatencyHistogram() -> LatencyHistogram {
    LatencyHistogram(
        lowestDiscernibleValue: 1,
        highestTrackableValue: 120_000_000_000,
        numberOfSignificantValueDigits: .three
    )
}
