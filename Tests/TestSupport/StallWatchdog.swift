import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Watches the test process for stalls: every 100 ms a probe runs on each of NIO's shared
/// event loops and one on Swift's cooperative pool, and a plain thread of its own checks that
/// each probe ran. A probe late by more than ``threshold`` is reported on standard error with
/// every thread's name, state and kernel wait channel (and, with `SMSG_WATCHDOG_GDB=1`, a
/// backtrace of every thread taken by gdb) written to a file; when the process ends, the
/// largest lag seen is printed. The monitor thread notes its own lag too: when it is late as
/// well, the whole process was paused (the machine, not a blocked pool).
///
/// Started by the test helpers (``eventually(_:timeout:sourceLocation:_:)`` and others); it
/// starts once per process, and `SMSG_WATCHDOG=0` turns it off.
public final class StallWatchdog: Sendable {
    /// How late a probe may be before it is reported.
    public static let threshold = Duration.seconds(1)
    static let interval = Duration.milliseconds(100)

    private struct Probe {
        var name: String
        var lastTick: ContinuousClock.Instant
        /// The lag being reported now, if the probe is late.
        var reported = false
    }

    private struct State {
        var probes: [Probe] = []
        /// The largest lag of each probe, by name.
        var largest: [String: Duration] = [:]
        var monitorLargest = Duration.zero
        var dumps = 0
    }

    private let state = NIOLockedValueBox(State())

    /// The watchdog of this process, started on first use.
    static let shared: StallWatchdog? = {
        guard ProcessInfo.processInfo.environment["SMSG_WATCHDOG"] != "0" else { return nil }
        let watchdog = StallWatchdog()
        watchdog.start()
        return watchdog
    }()

    /// Starts the process's watchdog unless it runs already.
    public static func start() {
        _ = Self.shared
    }

    /// The largest lag seen so far, and which probe had it.
    public static var largestLag: (probe: String, lag: Duration)? {
        guard let shared = Self.shared else { return nil }
        return shared.state.withLockedValue { state in
            state.largest.max { $0.value < $1.value }.map { ($0.key, $0.value) }
        }
    }

    private func start() {
        let now = ContinuousClock.now
        let loops = Array(MultiThreadedEventLoopGroup.singleton.makeIterator())
        self.state.withLockedValue { state in
            for (index, _) in loops.enumerated() {
                state.probes.append(Probe(name: "event loop \(index)", lastTick: now))
            }
            state.probes.append(Probe(name: "cooperative pool", lastTick: now))
        }
        for (index, loop) in loops.enumerated() {
            loop.scheduleRepeatedTask(initialDelay: .zero, delay: TimeAmount(Self.interval)) { _ in
                self.tick(index)
            }
        }
        let pool = loops.count
        Task.detached(priority: .medium) {
            while true {
                self.tick(pool)
                try? await Task.sleep(for: Self.interval)
            }
        }
        let thread = Thread { self.monitor() }
        thread.name = "smsg-watchdog"
        thread.start()
        atexit {
            guard let (probe, lag) = StallWatchdog.largestLag else { return }
            let line = "watchdog: the largest lag was \(StallWatchdog.seconds(lag)) (\(probe))\n"
            FileHandle.standardError.write(Data(line.utf8))
        }
    }

    private func tick(_ index: Int) {
        let now = ContinuousClock.now
        let recovered: (String, Duration)? = self.state.withLockedValue { state in
            let late = now - state.probes[index].lastTick - Self.interval
            let name = state.probes[index].name
            if late > state.largest[name, default: .zero] {
                state.largest[name] = late
            }
            state.probes[index].lastTick = now
            defer { state.probes[index].reported = false }
            return state.probes[index].reported ? (name, late) : nil
        }
        if let (name, late) = recovered {
            Self.say("watchdog: \(name) ran again after \(Self.seconds(late + Self.interval))")
        }
    }

    /// Checks the probes every interval, on a thread of its own.
    private func monitor() {
        var last = ContinuousClock.now
        while true {
            usleep(UInt32(Self.interval / .microseconds(1)))
            let now = ContinuousClock.now
            let ownLag = now - last - Self.interval
            last = now
            let late: [(String, Duration)] = self.state.withLockedValue { state in
                state.monitorLargest = max(state.monitorLargest, ownLag)
                var late: [(String, Duration)] = []
                for index in state.probes.indices where !state.probes[index].reported {
                    let lag = now - state.probes[index].lastTick
                    if lag > Self.threshold {
                        state.probes[index].reported = true
                        late.append((state.probes[index].name, lag))
                    }
                }
                return late
            }
            guard !late.isEmpty else { continue }
            let names = late.map { "\($0.0) (\(Self.seconds($0.1)))" }.joined(separator: ", ")
            let whole =
                ownLag > Self.threshold
                ? "; the watchdog itself was \(Self.seconds(ownLag)) late: the whole process was paused" : ""
            let file = self.dump()
            Self.say("watchdog: late over \(Self.seconds(Self.threshold)): \(names)\(whole); threads in \(file)")
        }
    }

    /// Writes every thread's name, state and wait channel (and gdb's backtraces, when asked
    /// for) to a file; returns its path.
    private func dump() -> String {
        let number = self.state.withLockedValue { state -> Int in
            state.dumps += 1
            return state.dumps
        }
        let pid = getpid()
        let path = "\(NSTemporaryDirectory())smsg-watchdog-\(pid)-\(number).txt"
        var text = "threads of \(pid) at \(Date())\n"
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        for tid in tasks.sorted(by: { Int($0) ?? 0 < Int($1) ?? 0 }) {
            let base = "/proc/self/task/\(tid)"
            let name = Self.read("\(base)/comm")
            let wchan = Self.read("\(base)/wchan")
            // stat: "tid (comm) S ..."; the state is the field after the closing parenthesis.
            let stat = Self.read("\(base)/stat")
            let state = stat.split(separator: ")").last?.split(separator: " ").first.map(String.init) ?? "?"
            text += "\(tid) \(name) state=\(state) wchan=\(wchan)\n"
        }
        try? text.write(toFile: path, atomically: true, encoding: .utf8)
        if ProcessInfo.processInfo.environment["SMSG_WATCHDOG_GDB"] == "1" {
            // gdb stops every thread of this process, this one too: its output goes straight to
            // a file (through a pipe, it would fill the pipe and wait for a reader it stopped).
            let gdb = Process()
            gdb.executableURL = URL(fileURLWithPath: "/bin/sh")
            gdb.arguments = ["-c", "gdb -p \(pid) -batch -ex 'thread apply all bt 25' >> '\(path)' 2>&1"]
            if (try? gdb.run()) != nil {
                gdb.waitUntilExit()
            }
        }
        return path
    }

    private static func read(_ path: String) -> String {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func seconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        return String(format: "%.2f s", Double(seconds) + Double(attoseconds) / 1e18)
    }

    private static func say(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}
