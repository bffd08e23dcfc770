import Testing

@testable import EtcdElection

@Suite("Which etcd errors try another member")
struct EtcdErrorTests {
    @Test("decided by etcd's status code, never by its message")
    func retryByStatus() {
        #expect(EtcdError(.server, "etcdserver: no leader", status: EtcdError.Status.unavailable).triesAnotherMember)
        #expect(
            EtcdError(.server, "context deadline exceeded", status: EtcdError.Status.deadlineExceeded)
                .triesAnotherMember
        )
        #expect(EtcdError(.unreachable, "connection refused").triesAnotherMember)
        // The words of a transient failure under another status are not taken for one.
        #expect(!EtcdError(.server, "etcdserver: no leader", status: 2).triesAnotherMember)
        #expect(!EtcdError(.server, "etcdserver: requested lease not found", status: 5).triesAnotherMember)
        #expect(!EtcdError(.badAnswer, "not JSON").triesAnotherMember)
        #expect(!EtcdError(.shutDown, "the election was shut down").triesAnotherMember)
    }

    @Test("a lease etcd does not know is NOT_FOUND from etcd, whatever the words")
    func leaseNotFound() {
        #expect(EtcdError(.server, "etcdserver: requested lease not found", status: 5).isLeaseNotFound)
        #expect(!EtcdError(.server, "etcdserver: requested lease not found", status: 2).isLeaseNotFound)
        #expect(!EtcdError(.unreachable, "lease not found").isLeaseNotFound)
    }

    @Test("equality compares code, message and status, not the cause")
    func equality() {
        let plain = EtcdError(.server, "etcdserver: no leader", status: 14)
        #expect(plain == EtcdError(.server, "etcdserver: no leader", status: 14, cause: CancellationError()))
        #expect(plain != EtcdError(.server, "etcdserver: no leader", status: 4))
    }
}
