import Foundation
import SMSGTestSupport
import Testing

/// The config file, environment variables and flags of `securemsg leader` and `collaborator`.
@Suite("securemsg config files and environment")
struct ConfigFileTests {
    static func writeConfig(_ object: [String: Any]) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("smsg-\(UUID().uuidString).json").path
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Runs the command to its end; returns its exit status and output.
    static func run(_ arguments: [String], environment: [String: String] = [:]) async throws -> (Int32?, String) {
        let process = try ChildProcess(BenchServerTests.executable, arguments, environment: environment)
        let status = await process.waitForExit()
        return (status, process.output)
    }

    /// The JSON object `--print-config` printed.
    static func printed(_ output: String) throws -> [String: Any] {
        let start = try #require(output.firstIndex(of: "{"))
        let end = try #require(output.lastIndex(of: "}"))
        let object = try JSONSerialization.jsonObject(with: Data(output[start...end].utf8))
        return try #require(object as? [String: Any])
    }

    static func same(_ left: [String: Any], _ right: [String: Any]) -> Bool {
        NSDictionary(dictionary: left).isEqual(to: right)
    }

    @Test("a leader config file with every option round-trips through --print-config")
    func leaderRoundTrip() async throws {
        let certs = BenchServerTests.certificates
        let config: [String: Any] = [
            "listen": "127.0.0.1:7999", "cert": "\(certs)/leader.pem", "key": "\(certs)/leader.key",
            "ca": "\(certs)/ca.pem", "require_client_cert": true, "metrics": "127.0.0.1:9199",
            "crl": "\(certs)/ca.crl.pem",
        ]
        let path = try Self.writeConfig(config)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (status, output) = try await Self.run(["leader", "--config", path, "--print-config"])
        #expect(status == 0, "\(output)")
        #expect(Self.same(try Self.printed(output), config), "\(output)")
    }

    @Test("the election settings round-trip through a config file, and the environment overrides it")
    func electionSettings() async throws {
        let certs = BenchServerTests.certificates
        let config: [String: Any] = [
            "listen": "127.0.0.1:7999", "cert": "\(certs)/leader.pem", "key": "\(certs)/leader.key",
            "ca": "\(certs)/ca.pem", "require_client_cert": true, "etcd": "http://127.0.0.1:2379,http://127.0.0.1:2380",
            "election": "group-a", "lease_ttl": "2", "advertise": "10.0.0.1:7443",
        ]
        let path = try Self.writeConfig(config)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (status, output) = try await Self.run(["leader", "--config", path, "--print-config"])
        #expect(status == 0, "\(output)")
        #expect(Self.same(try Self.printed(output), config), "\(output)")

        let (overridden, environmentOutput) = try await Self.run(
            [
                "collaborator", "--id", "collab-1", "--cert", "\(certs)/collab-1.pem", "--key", "\(certs)/collab-1.key",
                "--ca", "\(certs)/ca.pem", "--print-config",
            ],
            environment: ["SMSG_ETCD": "http://127.0.0.1:2379", "SMSG_ELECTION": "group-b"]
        )
        #expect(overridden == 0, "\(environmentOutput)")
        let printed = try Self.printed(environmentOutput)
        #expect(printed["etcd"] as? String == "http://127.0.0.1:2379")
        #expect(printed["election"] as? String == "group-b")
        #expect(printed["leader"] == nil)
    }

    @Test("bad election settings get clear errors")
    func badElectionSettings() async throws {
        let certs = BenchServerTests.certificates
        let collaborator = [
            "collaborator", "--id", "collab-1", "--cert", "\(certs)/collab-1.pem", "--key", "\(certs)/collab-1.key",
            "--ca", "\(certs)/ca.pem",
        ]
        let cases: [([String], String)] = [
            (["--etcd", "127.0.0.1:2379", "--election", "g"], "is not an http:// or https:// URL"),
            (["--etcd", "http://127.0.0.1:2379"], "election is required"),
            (["--election", "g"], "give the etcd endpoints too"),
            (
                ["--etcd", "http://127.0.0.1:2379", "--election", "g", "--lease-ttl", "0"],
                "whole seconds from 1 to 3600"
            ),
            (["--etcd", "https://127.0.0.1:2379", "--election", "g"], "https etcd endpoints need etcd_ca"),
            (
                ["--etcd", "https://127.0.0.1:2379", "--election", "g", "--etcd-ca", "/nonexistent/ca.pem"],
                "TLS configuration for etcd refused",
            ),
            (["--etcd", "http://127.0.0.1:2379", "--election", "g", "--leader", "127.0.0.1:7443"], "not both"),
            ([], "leader is required"),
        ]
        for (arguments, message) in cases {
            let (status, output) = try await Self.run(collaborator + arguments + ["--print-config"])
            #expect(status != 0, "\(arguments)")
            #expect(output.contains(message), "\(arguments): \(output)")
        }
        let leader = [
            "leader", "--cert", "\(certs)/leader.pem", "--key", "\(certs)/leader.key", "--ca", "\(certs)/ca.pem",
        ]
        let leaderCases: [([String], String)] = [
            (["--advertise", "10.0.0.1:7443"], "advertise is for an election"),
            (
                ["--etcd", "http://127.0.0.1:2379", "--election", "g", "--listen", "0.0.0.0:7443"],
                "give advertise, the address collaborators reach"
            ),
            (
                ["--etcd", "http://127.0.0.1:2379", "--election", "g", "--listen", "[::]:7443"],
                "give advertise, the address collaborators reach"
            ),
        ]
        for (arguments, message) in leaderCases {
            let (status, output) = try await Self.run(leader + arguments + ["--print-config"])
            #expect(status != 0, "\(arguments)")
            #expect(output.contains(message), "\(arguments): \(output)")
        }
    }

    @Test("a collaborator config file with every option round-trips through --print-config")
    func collaboratorRoundTrip() async throws {
        let certs = BenchServerTests.certificates
        let config: [String: Any] = [
            "leader": "[::1]:7443", "id": "collab-1", "cert": "\(certs)/collab-1.pem", "key": "\(certs)/collab-1.key",
            "ca": "\(certs)/ca.pem", "server_name": "localhost", "status": "ready",
        ]
        let path = try Self.writeConfig(config)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (status, output) = try await Self.run(["collaborator", "--config", path, "--print-config"])
        #expect(status == 0, "\(output)")
        #expect(Self.same(try Self.printed(output), config), "\(output)")
    }

    @Test("a flag beats an environment variable, which beats the file")
    func precedence() async throws {
        let certs = BenchServerTests.certificates
        let path = try Self.writeConfig([
            "listen": "127.0.0.1:1001", "cert": "\(certs)/leader.pem", "key": "\(certs)/leader.key",
            "ca": "\(certs)/ca.pem",
        ])
        defer { try? FileManager.default.removeItem(atPath: path) }
        let environment = ["SMSG_LISTEN": "127.0.0.1:1002", "SMSG_REQUIRE_CLIENT_CERT": "true"]
        let (_, fromEnvironment) = try await Self.run(
            ["leader", "--config", path, "--print-config"],
            environment: environment
        )
        let settings = try Self.printed(fromEnvironment)
        #expect(settings["listen"] as? String == "127.0.0.1:1002")
        #expect(settings["require_client_cert"] as? Bool == true)
        let (_, fromFlag) = try await Self.run(
            ["leader", "--config", path, "--listen", "127.0.0.1:1003", "--print-config"],
            environment: environment
        )
        #expect(try Self.printed(fromFlag)["listen"] as? String == "127.0.0.1:1003")
    }

    @Test("a bad value names its key and the problem")
    func badValues() async throws {
        let certs = BenchServerTests.certificates
        let base: [String: Any] = [
            "cert": "\(certs)/leader.pem", "key": "\(certs)/leader.key", "ca": "\(certs)/ca.pem",
        ]
        let cases: [([String: Any], [String])] = [
            (["listen": "nowhere"], [#"config key "listen""#, "HOST:PORT"]),
            (["listen": 7443], [#"config key "listen""#, "expected a string, got 7443"]),
            (["require_client_cert": "yes"], [#"config key "require_client_cert""#, "expected true or false"]),
            (["require_client_cert": [true]], [#"config key "require_client_cert""#, "expected true or false"]),
            (["lisen": "127.0.0.1:7443"], [#"unknown key "lisen""#, "known keys: listen"]),
            (["require_client_cert": NSNull()], [#"config key "require_client_cert""#, "expected a value, got null"]),
            (["heartbeat": ["seconds": 5]], [#"config key "heartbeat""#, "expected a value, got an object"]),
            (["key_passphrase": 123_456], [#"config key "key_passphrase""#, "expected a string, got <redacted>"]),
        ]
        for (extra, expected) in cases {
            let path = try Self.writeConfig(base.merging(extra) { $1 })
            defer { try? FileManager.default.removeItem(atPath: path) }
            let (status, output) = try await Self.run(["leader", "--config", path, "--print-config"])
            #expect(status != 0)
            for text in expected {
                #expect(output.contains(text), "\(extra): \(output)")
            }
        }
        let (missingStatus, missing) = try await Self.run(["leader", "--listen", "127.0.0.1:0", "--print-config"])
        #expect(missingStatus != 0)
        #expect(missing.contains("cert is required"), "\(missing)")
        let (envStatus, envOutput) = try await Self.run(
            ["leader", "--cert", "a", "--key", "b", "--ca", "c", "--print-config"],
            environment: ["SMSG_REQUIRE_CLIENT_CERT": "maybe"]
        )
        #expect(envStatus != 0)
        #expect(envOutput.contains("environment variable SMSG_REQUIRE_CLIENT_CERT: expected true or false"))
        let (idStatus, idOutput) = try await Self.run(
            ["collaborator", "--leader", "127.0.0.1:1", "--id", "bad id", "--cert", "a", "--key", "b", "--ca", "c"]
        )
        #expect(idStatus != 0)
        #expect(idOutput.contains("--id: must be 1 to 128"), "\(idOutput)")
        let (notJSONStatus, notJSON) = try await Self.run(["leader", "--config", "\(certs)/ca.pem"])
        #expect(notJSONStatus != 0)
        #expect(notJSON.contains("is not valid JSON"))
    }

    @Test("a failure once running is one line and exit 1; arguments that do not parse get the usage; --version")
    func failureLines() async throws {
        let certs = BenchServerTests.certificates
        let (status, output) = try await Self.run([
            "leader", "--listen", "127.0.0.1:0", "--cert", "/nonexistent/leader.pem", "--key",
            "/nonexistent/leader.key", "--ca", "\(certs)/ca.pem",
        ])
        // Once: exit 64 and the whole usage after the error.
        #expect(status == 1)
        #expect(
            output
                == "Error: TLS configuration refused: cannot open the certificate chain file /nonexistent/leader.pem\n",
            "\(output)"
        )
        let (parseStatus, parseOutput) = try await Self.run(["leader", "--bogus"])
        #expect(parseStatus == 64)
        #expect(parseOutput.contains("Unknown option '--bogus'") && parseOutput.contains("Usage:"), "\(parseOutput)")
        let (versionStatus, version) = try await Self.run(["--version"])
        #expect(versionStatus == 0)
        #expect(version.hasPrefix("securemsg "), "\(version)")
    }

    @Test("a leader runs from a config file alone")
    func leaderFromFile() async throws {
        let certs = BenchServerTests.certificates
        let path = try Self.writeConfig([
            "listen": "127.0.0.1:0", "cert": "\(certs)/leader.pem", "key": "\(certs)/leader.key",
            "ca": "\(certs)/ca.pem",
            "require_client_cert": true,
        ])
        defer { try? FileManager.default.removeItem(atPath: path) }
        let leader = try ChildProcess(BenchServerTests.executable, ["leader", "--config", path])
        defer { leader.terminate() }
        await leader.waitForOutput(containing: "listening on 127.0.0.1:")
        leader.signal(SIGTERM)
        #expect(await leader.waitForExit() == 0)
    }

    @Test("log level, heartbeat, allow-list and the key's passphrase are settings; the passphrase is never shown")
    func operatorSettings() async throws {
        let certs = BenchServerTests.certificates
        let path = try Self.writeConfig([
            "cert": "\(certs)/leader.pem", "key": "\(certs)/leader.key", "ca": "\(certs)/ca.pem",
            "log_level": "info", "heartbeat": "0.5", "allow": "collab-1,collab-2", "key_passphrase": "s3cret-value",
        ])
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (status, output) = try await Self.run(["leader", "--config", path, "--print-config"])
        #expect(status == 0, "\(output)")
        let printed = try Self.printed(output)
        #expect(printed["log_level"] as? String == "info")
        #expect(printed["heartbeat"] as? String == "0.5")
        #expect(printed["allow"] as? String == "collab-1,collab-2")
        #expect(printed["key_passphrase"] as? String == "<redacted>")
        #expect(!output.contains("s3cret-value"))

        let collaborator = [
            "collaborator", "--leader", "127.0.0.1:7443", "--id", "collab-1", "--cert", "\(certs)/collab-1.pem",
            "--key", "\(certs)/collab-1.key", "--ca", "\(certs)/ca.pem", "--print-config",
        ]
        // swift-configuration's access log (CONFIG_ACCESS_LOG_FILE) names the secret, never its value.
        let accessLog = FileManager.default.temporaryDirectory.appendingPathComponent("smsg-access-\(UUID()).log").path
        defer { try? FileManager.default.removeItem(atPath: accessLog) }
        let (envStatus, envOutput) = try await Self.run(
            collaborator,
            environment: [
                "SMSG_KEY_PASSPHRASE": "from-the-environment", "SMSG_LOG_LEVEL": "debug",
                "CONFIG_ACCESS_LOG_FILE": accessLog,
            ]
        )
        #expect(envStatus == 0, "\(envOutput)")
        let accesses = try String(contentsOfFile: accessLog, encoding: .utf8)
        #expect(accesses.contains("key_passphrase -> \"<REDACTED>\""), "\(accesses)")
        #expect(!accesses.contains("from-the-environment"))
        #expect(try Self.printed(envOutput)["key_passphrase"] as? String == "<redacted>")
        #expect(try Self.printed(envOutput)["log_level"] as? String == "debug")
        #expect(!envOutput.contains("from-the-environment"))

        // The passphrase file named by a flag beats a passphrase in the environment; two from
        // the same place are refused.
        let passphraseFile = FileManager.default.temporaryDirectory.appendingPathComponent("smsg-pass-\(UUID())").path
        try "from-a-file\n".write(toFile: passphraseFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: passphraseFile) }
        let (bothStatus, bothOutput) = try await Self.run(
            collaborator + ["--key-passphrase-file", passphraseFile],
            environment: ["SMSG_KEY_PASSPHRASE": "from-the-environment"]
        )
        #expect(bothStatus == 0, "\(bothOutput)")
        #expect(try Self.printed(bothOutput)["key_passphrase_file"] as? String == passphraseFile)
        #expect(try Self.printed(bothOutput)["key_passphrase"] == nil)
        let (sameStatus, sameOutput) = try await Self.run(
            collaborator,
            environment: ["SMSG_KEY_PASSPHRASE": "x", "SMSG_KEY_PASSPHRASE_FILE": passphraseFile]
        )
        #expect(sameStatus == 1)
        #expect(sameOutput.contains("both give the key's passphrase"), "\(sameOutput)")

        let (flagStatus, flagOutput) = try await Self.run(collaborator + ["--key-passphrase", "x"])
        #expect(flagStatus == 64, "no flag carries the passphrase itself: \(flagOutput)")
        let (levelStatus, levelOutput) = try await Self.run(collaborator + ["--log-level", "loud"])
        #expect(levelStatus == 1)
        #expect(levelOutput.contains("--log-level: expected trace, debug, info, notice"), "\(levelOutput)")
        let (beatStatus, beatOutput) = try await Self.run(collaborator + ["--heartbeat", "0"])
        #expect(beatStatus == 1)
        #expect(beatOutput.contains("--heartbeat: must be seconds from 0.05 to 3600"), "\(beatOutput)")
    }

    @Test("an encrypted key opens with the passphrase from a file or the environment, and not without")
    func encryptedKey() async throws {
        let certs = BenchServerTests.certificates
        let base = [
            "leader", "--listen", "127.0.0.1:0", "--cert", "\(certs)/server.pem", "--key", "\(certs)/encrypted.key",
            "--ca", "\(certs)/ca.pem",
        ]
        for (extra, environment) in [
            (["--key-passphrase-file", "\(certs)/encrypted.pass"], [String: String]()),
            ([], ["SMSG_KEY_PASSPHRASE": "test-passphrase"]),
        ] {
            let leader = try ChildProcess(BenchServerTests.executable, base + extra, environment: environment)
            defer { leader.terminate() }
            await leader.waitForOutput(containing: "listening on 127.0.0.1:")
            leader.signal(SIGTERM)
            #expect(await leader.waitForExit() == 0, "\(extra) \(environment)")
        }
        let (status, output) = try await Self.run(base)
        #expect(status == 1)
        #expect(output.contains("an encrypted key needs a passphrase"), "\(output)")
    }

    @Test("the allow-list refuses others: a notice at the leader, the collaborator gives up")
    func allowList() async throws {
        let certs = BenchServerTests.certificates
        let leader = try ChildProcess(
            BenchServerTests.executable,
            [
                "leader", "--listen", "127.0.0.1:0", "--cert", "\(certs)/leader.pem", "--key", "\(certs)/leader.key",
                "--ca", "\(certs)/ca.pem", "--require-client-cert", "--allow", "collab-1",
            ]
        )
        defer { leader.terminate() }
        await leader.waitForOutput(containing: "listening on 127.0.0.1:")
        let port = try #require(BenchServerTests.listeningPort(leader.output))
        let (status, output) = try await Self.run([
            "collaborator", "--leader", "127.0.0.1:\(port)", "--id", "collab-2", "--cert", "\(certs)/collab-2.pem",
            "--key", "\(certs)/collab-2.key", "--ca", "\(certs)/ca.pem",
        ])
        #expect(status == 1, "\(output)")
        #expect(output.contains("Error: ") && output.contains("node not allowed"), "\(output)")
        await leader.waitForOutput(containing: "reason=not_allowed")
        leader.signal(SIGTERM)
        #expect(await leader.waitForExit() == 0)
    }
}
