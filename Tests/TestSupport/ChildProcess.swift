import Foundation
import NIOConcurrencyHelpers
public import Testing

/// A child process (the openssl CLI) with its output collected as it comes.
public final class ChildProcess: Sendable {
    private let process: Process
    private let input: Pipe
    private let collected = NIOLockedValueBox("")
    /// Whether the output pipe reached its end (every writer closed it).
    private let outputEnded = NIOLockedValueBox(false)

    /// Starts `executable` with `arguments`, and `environment` added to the inherited one, in
    /// `directory` (by default this process's).
    public init(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String] = [:],
        directory: String? = nil
    ) throws {
        StallWatchdog.start()
        let process = Process()
        if let directory {
            process.currentDirectoryURL = URL(fileURLWithPath: directory)
        }
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments =
            environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" } + [executable] + arguments
        let input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        let collected = self.collected
        let outputEnded = self.outputEnded
        output.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if data.isEmpty {
                outputEnded.withLockedValue { $0 = true }
                handle.readabilityHandler = nil
            } else {
                collected.withLockedValue { $0 += String(decoding: data, as: UTF8.self) }
            }
        }
        self.process = process
        self.input = input
        try process.run()
    }

    deinit {
        if self.process.isRunning {
            self.process.terminate()
        }
    }

    /// Everything written to stdout and stderr so far.
    public var output: String { self.collected.withLockedValue { $0 } }

    public var isRunning: Bool { self.process.isRunning }

    public var processIdentifier: Int32 { self.process.processIdentifier }

    public var exitCode: Int32 { self.process.terminationStatus }

    public func write(_ text: String) {
        self.input.fileHandleForWriting.write(Data(text.utf8))
    }

    public func closeInput() {
        try? self.input.fileHandleForWriting.close()
    }

    public func terminate() {
        if self.process.isRunning {
            self.process.terminate()
        }
    }

    /// Sends `signal` (e.g. SIGINT) to the process.
    public func signal(_ signal: Int32) {
        if self.process.isRunning {
            kill(self.process.processIdentifier, signal)
        }
    }

    /// Waits until the output contains `text`; records an issue on timeout.
    @discardableResult
    public func waitForOutput(
        containing text: String,
        timeout: Double = 10,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        while ContinuousClock.now < deadline {
            if self.output.contains(text) { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("no \"\(text)\" in output:\n\(self.output)", sourceLocation: sourceLocation)
        return false
    }

    /// Waits for the process to exit; terminates it and records an issue on timeout.
    @discardableResult
    public func waitForExit(timeout: Double = 10, sourceLocation: SourceLocation = #_sourceLocation) async -> Int32? {
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        while ContinuousClock.now < deadline {
            if !self.process.isRunning {
                // What it wrote just before exiting may not have been read yet: wait for the
                // pipe's end, for a while (another child may have inherited its writing end).
                let drained = ContinuousClock.now + .seconds(2)
                while !self.outputEnded.withLockedValue({ $0 }), ContinuousClock.now < drained {
                    try? await Task.sleep(for: .milliseconds(5))
                }
                return self.process.terminationStatus
            }
            try? await Task.sleep(for: .milliseconds(10))
        }
        self.terminate()
        Issue.record(
            "process still running after \(timeout) s; output:\n\(self.output)",
            sourceLocation: sourceLocation
        )
        return nil
    }
}

/// Runs a command to completion and returns its standard output.
///
/// The output goes to a file, not a pipe: reading a pipe to its end also waits for every other
/// child that inherited its writing end (an `openssl s_server` another test starts at the same
/// moment, say), which can be for as long as that test runs.
public func runProcess(_ executable: String, _ arguments: [String]) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = [executable] + arguments
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("smsg-output-\(UUID())").path
    guard FileManager.default.createFile(atPath: path, contents: nil), let output = FileHandle(forWritingAtPath: path)
    else {
        throw CocoaError(.fileWriteUnknown)
    }
    defer { try? FileManager.default.removeItem(atPath: path) }
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    try output.close()
    return String(decoding: try Data(contentsOf: URL(fileURLWithPath: path)), as: UTF8.self)
}
