import Logging
import Messaging
public import NIOCore

#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif

/// Turns a value into a message body.
public protocol MessageEncoder: Sendable {
    func encode(_ value: some Encodable, allocator: ByteBufferAllocator) throws -> ByteBuffer
}

/// Turns a message body back into a value.
public protocol MessageDecoder: Sendable {
    func decode<Value: Decodable>(_ type: Value.Type, from body: ByteBuffer) throws -> Value
}

extension JSONEncoder: MessageEncoder {
    public func encode(_ value: some Encodable, allocator: ByteBufferAllocator) throws -> ByteBuffer {
        let data = try self.encode(value)
        var buffer = allocator.buffer(capacity: data.count)
        buffer.writeBytes(data)
        return buffer
    }
}

extension JSONDecoder: MessageDecoder {
    public func decode<Value: Decodable>(_ type: Value.Type, from body: ByteBuffer) throws -> Value {
        try self.decode(type, from: Data(body.readableBytesView))
    }
}

/// The coder of typed messages (the `value:` forms of `send`, `request`, `on` and `onRequest`):
/// JSON unless the Leader or Collaborator is given another. Bodies sent as `ByteBuffer` never
/// pass through it.
public struct MessageCoder: Sendable {
    public var encoder: any MessageEncoder
    public var decoder: any MessageDecoder

    public init(encoder: any MessageEncoder, decoder: any MessageDecoder) {
        self.encoder = encoder
        self.decoder = decoder
    }

    /// JSON, with Foundation's coders in their default settings.
    public static var json: MessageCoder { MessageCoder(encoder: JSONEncoder(), decoder: JSONDecoder()) }

    func body(_ value: some Encodable) throws -> ByteBuffer {
        do {
            return try self.encoder.encode(value, allocator: ByteBufferAllocator())
        } catch {
            throw MessageCodingError(.encoding, "the value could not be encoded: \(error)")
        }
    }

    func value<Value: Decodable>(_ type: Value.Type, of message: Message) throws -> Value {
        do {
            return try self.decoder.decode(type, from: message.body)
        } catch {
            throw MessageCodingError(.decoding, "the body could not be decoded as \(Value.self): \(error)")
        }
    }
}

extension MessageCoder {
    /// A request's body, or `invalidArgument` with the coding error as its cause.
    func requestBody(_ value: some Encodable) throws -> ByteBuffer {
        do {
            return try self.body(value)
        } catch {
            throw RequestError.ended(.invalidArgument, "\(error)", cause: error)
        }
    }

    /// An answer's value, or `invalidArgument` with the coding error as its cause.
    func answer<Value: Decodable>(_ type: Value.Type, of message: Message) throws -> Value {
        do {
            return try self.value(type, of: message)
        } catch {
            throw RequestError.ended(.invalidArgument, "\(error)", cause: error)
        }
    }
}

/// A typed message that could not be encoded (before sending) or decoded (a RESPONSE's body).
/// A REQUEST whose body a typed handler cannot decode is answered INVALID_ARGUMENT instead.
public struct MessageCodingError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable {
        case encoding
        case decoding
    }

    public var kind: Kind
    public var reason: String

    public init(_ kind: Kind, _ reason: String) {
        self.kind = kind
        self.reason = reason
    }

    public var description: String { self.reason }
}

extension Router {
    /// Runs `handler` with the value decoded from every DATA (not REQUEST) on `topic`; a body
    /// that does not decode is logged and counted as a handler failure.
    public func on<Value: Decodable & Sendable>(
        topic: String,
        as type: Value.Type,
        coder: MessageCoder,
        _ handler: @escaping @Sendable (Value, HandlerContext) async throws -> Void
    ) {
        self.on(topic: topic) { message, context in
            try await handler(try coder.value(type, of: message), context)
        }
    }

    /// Answers every REQUEST on `topic` with the encoded value `handler` returns for the
    /// decoded request; a body that does not decode is answered INVALID_ARGUMENT, and a
    /// returned value that does not encode FAILED.
    public func onRequest<Request: Decodable & Sendable, Response: Encodable & Sendable>(
        topic: String,
        as type: Request.Type,
        coder: MessageCoder,
        _ handler: @escaping @Sendable (Request, HandlerContext) async throws -> Response
    ) {
        self.onRequest(topic: topic) { message, context -> ByteBuffer in
            let request: Request
            do {
                request = try coder.value(type, of: message)
            } catch {
                context.logger.debug("a request's body did not decode", metadata: ["error": "\(error)"])
                throw RequestError(.invalidArgument, "the request's body could not be decoded")
            }
            return try coder.body(try await handler(request, context))
        }
    }
}
