import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Blocks a thread of its own until stdin reaches its end.
package func waitForEndOfInput() async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let thread = NIOThreadPool(numberOfThreads: 1)
        thread.start()
        thread.submit { _ in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while read(0, &buffer, buffer.count) > 0 {}
            continuation.resume()
        }
        // The pool's thread exits once it is shut down after the job.
        thread.shutdownGracefully { _ in }
    }
}

/// Polls `condition` every `interval` until it holds (true) or `seconds` pass (false).
package func poll(seconds: Int, every interval: Duration = .milliseconds(100), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: interval)
    }
    return condition()
}
