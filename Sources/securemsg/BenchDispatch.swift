import ArgumentParser
import Cluster
import Foundation
import Logging
import Messaging
import NIOConcurrencyHelpers
import NIOCore
import SecureTransport

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `securemsg bench dispatch`: a leader over mutual TLS that waits for collaborators (each a
/// `securemsg collaborator --serve TOPIC[:MS]` process), then dispatches requests to whichever
/// handles the topic, and reports one JSON line: the share per collaborator, latency
/// percentiles, and the failures by code.
struct BenchDispatch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dispatch",
        abstract: "Dispatch requests from a leader to the collaborators that serve a topic (one JSON line)."
    )

    @Option(help: "The address to listen on, HOST:PORT (port 0: any; the port is printed).")
    var listen: String = "127.0.0.1:0"

    @Option(help: "Server certificate chain (PEM).")
    var cert: String = "certs/leader.pem"

    @Option(help: "Server private key (PEM).")
    var key: String = "certs/leader.key"

    @Option(help: "CA certificates (PEM) collaborators' certificates must chain to.")
    var ca: String = "certs/ca.pem"

    @Option(help: "How many collaborators to wait for before dispatching.")
    var collaborators: Int = 8

    @Option(help: "The topic requested.")
    var topic: String = "work"

    @Option(help: "How many requests.")
    var requests: Int = 100_000

    @Option(help: "How many requests in flight at once.")
    var concurrency: Int = 64

    @Option(help: "Each request's timeout, in milliseconds.")
    var timeoutMs: Int = 10_000

    @Flag(help: "Mark the requests idempotent (tried again on another collaborator when one is lost).")
    var idempotent = false

    @Option(help: "A process to SIGKILL once this many requests are done (with --kill-pid).")
    var killAfter: Int?

    @Option(help: "The process id to SIGKILL (a collaborator's).")
    var killPid: Int32?

    func validate() throws {
        guard self.collaborators > 0, self.requests > 0, self.concurrency > 0, self.timeoutMs > 0 else {
            throw ValidationError("--collaborators, --requests, --concurrency and --timeout-ms must be positive")
        }
        guard (self.killAfter == nil) == (self.killPid == nil) else {
            throw ValidationError("--kill-after and --kill-pid go together")
        }
    }

    /// What the run saw.
    private struct Tally {
        var share: [String: Int] = [:]
        var failures: [String: Int] = [:]
        var mayHaveRun = 0
        var latencies: [Duration] = []
        var done = 0
    }

    func run() async throws {
        let address = try HostPort(self.listen)
        let transport = try TLSTransport(
            configuration: .makeMutualTLSServerConfiguration(
                certificateChain: .file(self.cert),
                privateKey: .file(self.key),
                trustRoots: .file(self.ca)
            )
        )
        let logger = Logger(label: "securemsg.bench.dispatch") { _ in StreamLogHandler.standardError(label: "bench") }
        var configuration = LeaderConfiguration(host: address.host, port: address.port)
        configuration.server.maxConnections = max(configuration.server.maxConnections, self.collaborators + 16)
        let leader = Leader(configuration: configuration, transport: transport, logger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await leader.run() }
            defer {
                leader.shutdown()
            }
            let port = try await leader.listeningAddress().port ?? 0
            print("listening on \(address.host):\(port)")
            fflush(nil)
            while leader.collaborators(handling: self.topic).filter({ $0.state == .active }).count < self.collaborators
            {
                try await Task.sleep(for: .milliseconds(20))
            }
            let line = try await self.dispatchAll(leader)
            print(line)
            fflush(nil)
            leader.shutdown()
            try await group.next()
            group.cancelAll()
        }
    }

    private func dispatchAll(_ leader: Leader) async throws -> String {
        let tally = NIOLockedValueBox(Tally())
        let options = DispatchOptions(idempotent: self.idempotent)
        let timeout = Duration.milliseconds(self.timeoutMs)
        let clock = ContinuousClock()
        let started = clock.now
        let next = NIOLockedValueBox(0)
        let killed = NIOLockedValueBox(false)
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<min(self.concurrency, self.requests) {
                group.addTask {
                    while true {
                        let index = next.withLockedValue { value -> Int in
                            defer { value += 1 }
                            return value
                        }
                        guard index < self.requests else { return }
                        let began = clock.now
                        do {
                            let answer = try await leader.request(
                                toAnyHandling: self.topic,
                                body: ByteBuffer(integer: UInt64(index)),
                                timeout: timeout,
                                options: options
                            )
                            let elapsed = clock.now - began
                            let node = String(buffer: answer.body)
                            tally.withLockedValue {
                                $0.share[node, default: 0] += 1
                                $0.latencies.append(elapsed)
                                $0.done += 1
                            }
                        } catch {
                            let failure = RequestError(endingRequest: error)
                            tally.withLockedValue {
                                $0.failures["\(failure.code)", default: 0] += 1
                                if failure.mayHaveRun == true { $0.mayHaveRun += 1 }
                                $0.done += 1
                            }
                        }
                        if let killAfter = self.killAfter, let pid = self.killPid,
                            tally.withLockedValue({ $0.done }) >= killAfter,
                            killed.withLockedValue({ done in
                                defer { done = true }
                                return !done
                            })
                        {
                            kill(pid, SIGKILL)
                        }
                    }
                }
            }
        }
        let seconds = (clock.now - started) / .seconds(1)
        let result = tally.withLockedValue { $0 }
        let latencies = result.latencies.sorted()
        func percentile(_ p: Double) -> Double {
            guard !latencies.isEmpty else { return 0 }
            let index = min(latencies.count - 1, Int((Double(latencies.count) * p).rounded(.up)) - 1)
            return latencies[max(0, index)] / .milliseconds(1)
        }
        let counts = result.share.values
        let ratio = (counts.min() ?? 0) > 0 ? Double(counts.max()!) / Double(counts.min()!) : 0
        let share = result.share.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",")
        let failures = result.failures.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\($0.value)" }
            .joined(separator: ",")
        return #"{"workload":"dispatch","requests":\#(self.requests),"concurrency":\#(self.concurrency),"#
            + #""idempotent":\#(self.idempotent),"answered":\#(latencies.count),"failures":{\#(failures)},"#
            + #""may_have_run":\#(result.mayHaveRun),"share":{\#(share)},"max_min_share":\#(ratio),"#
            + #""p50_ms":\#(percentile(0.5)),"p99_ms":\#(percentile(0.99)),"max_ms":\#(percentile(1)),"#
            + #""duration_s":\#(seconds),"per_s":\#(Double(self.requests) / seconds)}"#
    }
}
