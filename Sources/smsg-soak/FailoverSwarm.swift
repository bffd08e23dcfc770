import ArgumentParser
import Cluster
import EtcdElection
import Foundation
import Logging
import Messaging
import NIOConcurrencyHelpers
import NIOCore
import SecureTransport
import ToolSupport

/// `smsg-soak failover-swarm`: many collaborators following one election, for
/// scripts/failover-bench.sh.
///
/// Each collaborator sends a numbered message with `sendAcknowledged` every interval. The swarm
/// prints `all N on term T at MS` (MS: milliseconds since the Unix epoch) the first time every
/// collaborator has a session with a leader of term T. When stdin ends it prints
/// `unacked at stop U` (messages still waiting for their ACK), every collaborator leaves, and it
/// prints `acked A failed F`: messages acknowledged, and sends that threw before the stop.
struct FailoverSwarm: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "failover-swarm",
        abstract: "Collaborators following an election (started by scripts/failover-bench.sh).",
        shouldDisplay: false
    )

    @Option(help: "etcd client URLs, comma-separated.")
    var etcd: String

    @Option(help: "The election's name.")
    var election: String

    @Option(help: "How many collaborators (node_ids soak-1 … soak-N).")
    var count: Int

    @Option(help: "Directory with ca.pem.")
    var certs: String

    @Option(help: "Directory with soak-N.pem and soak-N.key.")
    var collaboratorCerts: String

    @Option(help: "Milliseconds between one collaborator's acknowledged sends.")
    var intervalMilliseconds: Int = 500

    func run() async throws {
        let logger = Logger(label: "securemsg.failover-swarm", factory: { _ in SwiftLogNoOpLogHandler() })
        var electionConfiguration = EtcdElectionConfiguration(
            endpoints: self.etcd.split(separator: ",").map(String.init),
            electionName: self.election
        )
        electionConfiguration.connectTimeout = .seconds(5)
        let election = try EtcdLeaderElection(configuration: electionConfiguration, logger: logger)
        let collaborators = try (1...self.count).map { number in
            let name = "soak-\(number)"
            var configuration = CollaboratorConfiguration(nodeID: name)
            configuration.reconnect = ReconnectPolicy(initialDelay: .milliseconds(100), maximumDelay: .seconds(1))
            return Collaborator(
                election: election,
                transport: try TLSTransport(
                    configuration: .makeClientConfiguration(
                        certificateChain: .file("\(self.collaboratorCerts)/\(name).pem"),
                        privateKey: .file("\(self.collaboratorCerts)/\(name).key"),
                        trustRoots: .file("\(self.certs)/ca.pem")
                    )
                ),
                configuration: configuration,
                logger: logger
            )
        }
        let acked = NIOLockedValueBox(0)
        let failed = NIOLockedValueBox(0)
        let stopping = NIOLockedValueBox(false)
        let interval = Duration.milliseconds(self.intervalMilliseconds)
        await withTaskGroup(of: Void.self) { group in
            for collaborator in collaborators {
                group.addTask { try? await collaborator.run() }
                group.addTask {
                    var sequence = 0
                    while !Task.isCancelled {
                        try? await Task.sleep(for: interval)
                        sequence += 1
                        do {
                            try await collaborator.sendAcknowledged(
                                topic: "work",
                                body: ByteBuffer(string: "\(collaborator.configuration.nodeID) \(sequence)")
                            )
                            acked.withLockedValue { $0 += 1 }
                        } catch {
                            if !stopping.withLockedValue({ $0 }) {
                                failed.withLockedValue { $0 += 1 }
                            }
                            return
                        }
                    }
                }
            }
            group.addTask {
                // For each term: when the first collaborator was on it, when half were, and
                // when all were.
                var reported: Set<String> = []
                func report(_ what: String, _ term: UInt64) {
                    guard reported.insert("\(what) \(term)").inserted else { return }
                    let now = Int64(Date().timeIntervalSince1970 * 1000)
                    print("\(what) on term \(term) at \(now)")
                    fflush(nil)
                }
                while !Task.isCancelled {
                    let terms = collaborators.map { $0.session?.peer?.metadata["term"].flatMap { UInt64($0) } }
                    var counts: [UInt64: Int] = [:]
                    for case let term? in terms { counts[term, default: 0] += 1 }
                    for (term, count) in counts.sorted(by: { $0.key < $1.key }) {
                        report("first", term)
                        if 2 * count >= collaborators.count { report("half", term) }
                        if count == collaborators.count { report("all \(collaborators.count)", term) }
                    }
                    try? await Task.sleep(for: .milliseconds(10))
                }
            }
            await waitForEndOfInput()
            let unacked = collaborators.reduce(0) { $0 + $1.unacknowledgedCount }
            stopping.withLockedValue { $0 = true }
            print("unacked at stop \(unacked)")
            await withTaskGroup(of: Void.self) { leaving in
                for collaborator in collaborators {
                    leaving.addTask { await collaborator.leave() }
                }
            }
            group.cancelAll()
        }
        print("acked \(acked.withLockedValue { $0 }) failed \(failed.withLockedValue { $0 })")
    }
}
