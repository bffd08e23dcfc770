import Testing

@testable import EtcdElection

@Suite("Which etcd errors try another member")
struct EtcdErrorTests {
    @Test("decided by etcd's status code where it gives one")
    func retryByStatus() {
        #expect(EtcdError(.server, "etcdserver: no leader", status: EtcdError.Status.unavailable).triesAnotherMember)
        #expect(EtcdError(.server, "anything", status: EtcdError.Status.deadlineExceeded).triesAnotherMember)
        #expect(EtcdError(.unreachable, "connection refused").triesAnotherMember)
        // A status that says otherwise is believed, whatever the words.
        #expect(!EtcdError(.server, "etcdserver: no leader", status: 9).triesAnotherMember)
        #expect(!EtcdError(.server, "etcdserver: requested lease not found", status: 5).triesAnotherMember)
        #expect(!EtcdError(.badAnswer, "not JSON").triesAnotherMember)
        #expect(!EtcdError(.shutDown, "the election was shut down").triesAnotherMember)
    }

    @Test("under UNKNOWN (the election service's errors), etcd's own descriptions tell")
    func unknownStatus() {
        #expect(EtcdError(.server, "etcdserver: no leader", status: 2).triesAnotherMember)
        #expect(EtcdError(.server, "etcdserver: leader changed", status: 2).triesAnotherMember)
        #expect(EtcdError(.server, "etcdserver: request timed out", status: 2).triesAnotherMember)
        #expect(!EtcdError(.server, "election: session expired", status: 2).triesAnotherMember)
        #expect(EtcdError(.server, "etcdserver: requested lease not found", status: 2).isLeaseNotFound)
    }

    @Test("a lease etcd does not know: NOT_FOUND, or etcd's words for it under UNKNOWN")
    func leaseNotFound() {
        #expect(EtcdError(.server, "etcdserver: requested lease not found", status: 5).isLeaseNotFound)
        #expect(EtcdError(.server, "", status: 5).isLeaseNotFound)
        #expect(!EtcdError(.server, "etcdserver: requested lease not found", status: 9).isLeaseNotFound)
        #expect(!EtcdError(.unreachable, "etcdserver: requested lease not found").isLeaseNotFound)
    }

    @Test("equality compares code, message and status, not the cause")
    func equality() {
        let plain = EtcdError(.server, "etcdserver: no leader", status: 14)
        #expect(plain == EtcdError(.server, "etcdserver: no leader", status: 14, cause: CancellationError()))
        #expect(plain != EtcdError(.server, "etcdserver: no leader", status: 4))
    }
}
