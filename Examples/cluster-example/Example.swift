import SecureMessaging
import Tracing

struct Sum: Codable {
    var numbers: [Int]
}

struct Total: Codable {
    var total: Int
}

/// A leader and a collaborator over mutual TLS, each in its own ServiceGroup (as they would
/// be in two processes), with the test certificates in certs/ (run scripts/gen-certs.sh
/// first): a typed request in a span, a handler that fails with a status, a graceful shutdown.
@main
struct ClusterExample {
    static func main() async throws {
        let logger = Logger(label: "smsg.cluster-example")

        let leader = Leader(
            configuration: LeaderConfiguration(host: "127.0.0.1", port: 0),
            transport: try TLSTransport(
                configuration: .makeMutualTLSServerConfiguration(
                    certificateChain: .file("certs/leader.pem"),
                    privateKey: .file("certs/leader.key"),
                    trustRoots: .file("certs/ca.pem")
                )
            ),
            logger: logger
        )
        // In production: signals end the group (graceful shutdown: GOODBYE, then return).
        let leaderGroup = ServiceGroup(services: [leader], gracefulShutdownSignals: [.sigterm], logger: logger)

        try await withThrowingDiscardingTaskGroup { tasks in
            tasks.addTask { try await leaderGroup.run() }
            let port = try await leader.listeningAddress().port!

            let collaborator = Collaborator(
                leaderHost: "127.0.0.1",
                leaderPort: port,
                transport: try TLSTransport(
                    configuration: .makeClientConfiguration(
                        certificateChain: .file("certs/collab-1.pem"),
                        privateKey: .file("certs/collab-1.key"),
                        trustRoots: .file("certs/ca.pem")
                    )
                ),
                serverHostname: "localhost",
                configuration: CollaboratorConfiguration(nodeID: "collab-1"),
                logger: logger
            )
            // A typed handler: the body is decoded to Sum, the answer encoded from Total (JSON).
            collaborator.onRequest(topic: "sum", as: Sum.self) { sum, context in
                context.logger.info("adding up", metadata: ["count": "\(sum.numbers.count)"])
                return Total(total: sum.numbers.reduce(0, +))
            }
            // A handler that fails with a status the requester sees; any other error it threw
            // would answer FAILED, and the link stays up either way.
            collaborator.onRequest(topic: "divide", as: [Int].self) { numbers, _ -> Int in
                guard numbers.count == 2, numbers[1] != 0 else {
                    throw RequestError(.invalidArgument, "divide needs two numbers, the second not 0")
                }
                return numbers[0] / numbers[1]
            }
            let collaboratorGroup = ServiceGroup(services: [collaborator], logger: logger)
            tasks.addTask { try await collaboratorGroup.run() }

            for await event in leader.events {
                if case .joined(let record) = event {
                    print("joined: \(record.nodeID)")
                    break
                }
            }

            // Made in a span: with a tracer bootstrapped (InstrumentationSystem), the
            // collaborator's handler runs in a span of the same trace.
            let total = try await withSpan("add up") { _ in
                try await leader.request(to: "collab-1", topic: "sum", value: Sum(numbers: [1, 2, 3]), as: Total.self)
            }
            print("sum: \(total.total)")

            do {
                _ = try await leader.request(to: "collab-1", topic: "divide", value: [1, 0], as: Int.self)
            } catch let error as RequestError {
                // Every request throws RequestError: the responder's code, or what ended it here.
                print("divide: \(error.code) \(error.message)")
            }

            // Each group shuts down gracefully: the collaborator says GOODBYE, then the leader.
            await collaboratorGroup.triggerGracefulShutdown()
            await leaderGroup.triggerGracefulShutdown()
        }
    }
}
