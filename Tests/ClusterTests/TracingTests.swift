import Cluster
import InMemoryTracing
import Messaging
import NIOConcurrencyHelpers
import NIOCore
import SMSGTestSupport
import Testing
import Tracing

@Suite("Tracing across leader and collaborators")
struct TracingTests {
    /// The finished spans named `name`, of `kind`.
    static func spans(_ tracer: InMemoryTracer, _ name: String, _ kind: SpanKind) -> [FinishedInMemorySpan] {
        tracer.finishedSpans.filter { $0.operationName == name && $0.kind == kind }
    }

    @Test("a request made in a span: one trace from the leader to a collaborator and back")
    func oneTrace() async throws {
        let tracer = InMemoryTracer()
        try await withLeader(tracer: tracer) { leader, port, _ in
            leader.onRequest(topic: "lookup") { message, _ in message.body }
            let (collaborator, running) = try await startCollaborator("collab-1", port: port, tracer: tracer)
            let seen = NIOLockedValueBox<(current: String?, context: String?, headers: MessageHeaders)?>(nil)
            collaborator.onRequest(topic: "work") { message, context in
                seen.withLockedValue {
                    $0 = (
                        ServiceContext.current?.inMemorySpanContext?.traceID,
                        context.serviceContext.inMemorySpanContext?.traceID, context.headers
                    )
                }
                // A request the handler makes continues the same trace.
                return try await collaborator.request(topic: "lookup", body: message.body).body
            }
            await eventually("joined") {
                leader.collaborator("collab-1")?.state == .active && collaborator.session != nil
            }
            let reply = try await tracer.withSpan("job") { _ in
                try await leader.request(to: "collab-1", topic: "work", body: ByteBuffer(string: "x"))
            }
            #expect(String(buffer: reply.body) == "x")
            await eventually("five spans ended") { tracer.finishedSpans.count >= 5 }

            let job = try #require(Self.spans(tracer, "job", .internal).first)
            let workClient = try #require(Self.spans(tracer, "work", .client).first)
            let workServer = try #require(Self.spans(tracer, "work", .server).first)
            let lookupClient = try #require(Self.spans(tracer, "lookup", .client).first)
            let lookupServer = try #require(Self.spans(tracer, "lookup", .server).first)
            for span in [workClient, workServer, lookupClient, lookupServer] {
                #expect(span.traceID == job.traceID, "\(span.operationName) \(span.kind) is in the job's trace")
            }
            #expect(workClient.parentSpanID == job.spanID)
            #expect(workServer.parentSpanID == workClient.spanID, "the handler's span continues the request's")
            #expect(lookupClient.parentSpanID == workServer.spanID)
            #expect(lookupServer.parentSpanID == lookupClient.spanID)
            #expect(workServer.attributes["smsg.peer.node_id"]?.toSpanAttribute() == .string("leader"))
            let handlerSaw = try #require(seen.withLockedValue { $0 })
            #expect(handlerSaw.current == job.traceID)
            #expect(handlerSaw.context == job.traceID)
            // The context travelled as ordinary headers (W3C tracers name them traceparent and
            // tracestate; this one has its own names).
            #expect(handlerSaw.headers[InMemoryTracer.traceIDKey] == job.traceID)
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("a handler's failure marks its span; the requester's span records the error")
    func failureStatus() async throws {
        let tracer = InMemoryTracer()
        try await withLeader(tracer: tracer) { leader, port, _ in
            leader.onRequest(topic: "refuse") { _, _ -> ByteBuffer in
                throw RequestError(.invalidArgument, "no")
            }
            let (collaborator, running) = try await startCollaborator("collab-1", port: port, tracer: tracer)
            await eventually("connected") { collaborator.session != nil }
            await #expect(throws: RequestError.self) {
                try await collaborator.request(topic: "refuse", body: ByteBuffer())
            }
            await eventually("both spans ended") { tracer.finishedSpans.count >= 2 }
            let server = try #require(Self.spans(tracer, "refuse", .server).first)
            let client = try #require(Self.spans(tracer, "refuse", .client).first)
            #expect(server.status?.code == .error)
            #expect(server.attributes["smsg.status_code"]?.toSpanAttribute() == .int64(6))
            #expect(client.errors.count == 1)
            #expect(server.traceID == client.traceID)
            await collaborator.leave()
            try await running.value
        }
    }

    @Test("with a peer that has no headers extension, a traced request goes plain and succeeds")
    func plainPeer() async throws {
        let tracer = InMemoryTracer()
        try await withLeader(tracer: tracer) { leader, port, _ in
            let (collaborator, running) = try await startCollaborator("collab-1", port: port, tracer: tracer) {
                $0.session.extensions = []
            }
            collaborator.onRequest(topic: "work") { message, context in
                #expect(context.headers.isEmpty)
                return message.body
            }
            await eventually("joined") { leader.collaborator("collab-1")?.state == .active }
            let reply = try await tracer.withSpan("job") { _ in
                try await leader.request(to: "collab-1", topic: "work", body: ByteBuffer(string: "plain"))
            }
            #expect(String(buffer: reply.body) == "plain")
            await eventually("the handler's span ended") { !Self.spans(tracer, "work", .server).isEmpty }
            let job = try #require(Self.spans(tracer, "job", .internal).first)
            let server = try #require(Self.spans(tracer, "work", .server).first)
            #expect(server.traceID != job.traceID, "no headers, no trace context: a new trace")
            await collaborator.leave()
            try await running.value
        }
    }
}
