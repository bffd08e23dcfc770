import ArgumentParser

@main
struct SecureMsg: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "securemsg",
        abstract: "TLS messaging over the system's OpenSSL.",
        subcommands: [
            Demo.self, LeaderCommand.self, CollaboratorCommand.self, Bench.self, Soak.self, SoakLeader.self,
            SoakSwarm.self, FailoverSwarm.self,
        ]
    )
}
