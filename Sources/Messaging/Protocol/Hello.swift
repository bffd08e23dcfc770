/// The smsg/1 HELLO payload (PROTOCOL.md "HELLO"): the first frame each side sends.
///
/// On the wire it is a UTF-8 JSON object with `"protocol": "smsg"` and `"version": 1`
/// besides the keys below.
public struct Hello: Hashable, Sendable {
    /// The sender's node id (`node_id`); see ``isValidNodeID(_:)``.
    public var nodeID: String
    /// The sender's role (`role`), a non-empty string.
    public var role: String
    /// The sender's heartbeat interval in milliseconds (`heartbeat_ms`), positive; `nil` when
    /// not given.
    public var heartbeatMilliseconds: Int?
    /// The largest payload the sender accepts (`max_frame`), at least 65,536; `nil` when not
    /// given.
    public var maxFrame: Int?
    /// Free-form string metadata (`metadata`); empty when not given, and not sent when empty.
    public var metadata: [String: String]
    /// The session id (`session_id`), a non-empty string in the server's HELLO only.
    public var sessionID: String?
    /// The extensions the sender supports (`extensions`), as listed; `nil` when the key is
    /// absent (a peer that knows no extension). Not sent when `nil`.
    public var extensions: [String]?

    /// The smallest `max_frame` a HELLO may carry.
    static let minimumMaxFrame = 65_536
    /// The longest valid node id, in characters.
    static let maximumNodeIDLength = 128

    /// Creates a HELLO.
    ///
    /// - Parameters:
    ///   - nodeID: The sender's node id; see ``isValidNodeID(_:)``.
    ///   - role: The sender's role, a non-empty string.
    ///   - heartbeatMilliseconds: The sender's heartbeat interval in milliseconds, if given.
    ///   - maxFrame: The largest payload the sender accepts, if given; at least 65,536.
    ///   - metadata: Free-form string metadata.
    ///   - sessionID: The session id; only the server's HELLO has one.
    ///   - extensions: The extensions the sender supports, if it lists any.
    public init(
        nodeID: String,
        role: String,
        heartbeatMilliseconds: Int? = nil,
        maxFrame: Int? = nil,
        metadata: [String: String] = [:],
        sessionID: String? = nil,
        extensions: [String]? = nil
    ) {
        self.nodeID = nodeID
        self.role = role
        self.heartbeatMilliseconds = heartbeatMilliseconds
        self.maxFrame = maxFrame
        self.metadata = metadata
        self.sessionID = sessionID
        self.extensions = extensions
    }

    /// The extensions of ours that the sender lists (unknown names are not among them).
    public var supportedExtensions: ProtocolExtensions {
        ProtocolExtensions(names: self.extensions ?? [])
    }

    /// Whether `id` is a valid node id: 1 to 128 characters, each one of `A–Z a–z 0–9 . _ : @ -`.
    ///
    /// Characters are counted as Unicode scalars; every valid one is ASCII, so anything else
    /// (including a trailing newline) makes the id invalid.
    public static func isValidNodeID(_ id: String) -> Bool {
        var count = 0
        for scalar in id.unicodeScalars {
            count += 1
            guard count <= Self.maximumNodeIDLength else {
                return false
            }
            switch scalar {
            case "A"..."Z", "a"..."z", "0"..."9", ".", "_", ":", "@", "-":
                continue
            default:
                return false
            }
        }
        return count > 0
    }

    /// The HELLO payload: the JSON object
    /// `{"protocol":"smsg","version":1,"node_id":…,"role":…}` followed, inside it, by
    /// `heartbeat_ms`, `max_frame`, `metadata` (when not empty), `session_id` and `extensions`
    /// when set.
    func encoded() -> [UInt8] {
        var output: [UInt8] = []
        output.append(contentsOf: #"{"protocol":"smsg","version":1,"node_id":"#.utf8)
        JSONValue.serialize(string: self.nodeID, into: &output)
        output.append(contentsOf: #","role":"#.utf8)
        JSONValue.serialize(string: self.role, into: &output)
        if let heartbeatMilliseconds = self.heartbeatMilliseconds {
            output.append(contentsOf: #","heartbeat_ms":\#(heartbeatMilliseconds)"#.utf8)
        }
        if let maxFrame = self.maxFrame {
            output.append(contentsOf: #","max_frame":\#(maxFrame)"#.utf8)
        }
        if !self.metadata.isEmpty {
            output.append(contentsOf: #","metadata":"#.utf8)
            JSONValue.object(self.metadata.mapValues { .string($0) }).serialize(into: &output)
        }
        if let sessionID = self.sessionID {
            output.append(contentsOf: #","session_id":"#.utf8)
            JSONValue.serialize(string: sessionID, into: &output)
        }
        if let extensions = self.extensions {
            output.append(contentsOf: #","extensions":"#.utf8)
            JSONValue.array(extensions.map { .string($0) }).serialize(into: &output)
        }
        output.append(UInt8(ascii: "}"))
        return output
    }

    /// Parses and checks a received HELLO payload, in the order PROTOCOL.md gives.
    ///
    /// 1. The payload is a UTF-8 JSON object, else PROTOCOL_ERROR.
    /// 2. `protocol` is `"smsg"`, else PROTOCOL_ERROR.
    /// 3. `version` is an integer, else PROTOCOL_ERROR, equal to 1, else UNSUPPORTED_VERSION.
    /// 4. The other keys: a missing required key, or a present key of the wrong type or range,
    ///    is a PROTOCOL_ERROR. `null` is a wrong type, not an absent key. Unknown keys are
    ///    ignored.
    ///
    /// - Parameters:
    ///   - payload: The HELLO frame's payload.
    ///   - expectSessionID: Whether `session_id` is required (a client reading the server's
    ///     HELLO). When `false` a `session_id` is ignored like any unknown key.
    /// - Throws: The ``ProtocolViolation`` to report to the peer.
    static func decode(_ payload: some Collection<UInt8>, expectSessionID: Bool) throws(ProtocolViolation) -> Hello {
        let parsed: JSONValue
        do {
            parsed = try JSONValue.parse(payload)
        } catch {
            throw ProtocolViolation.protocolError("HELLO is not valid UTF-8 JSON")
        }
        guard case .object(let object) = parsed else {
            throw ProtocolViolation.protocolError("HELLO is not a JSON object")
        }

        guard case .string("smsg")? = object["protocol"] else {
            throw ProtocolViolation.protocolError(#"HELLO protocol must be "smsg""#)
        }

        switch object["version"] {
        case .integer(1)?:
            break
        case .integer(let version)?:
            throw ProtocolViolation(.unsupportedVersion, "unsupported version \(version)")
        case let version? where version.isIntegral:
            throw ProtocolViolation(.unsupportedVersion, "unsupported version")
        default:
            throw ProtocolViolation.protocolError("HELLO version must be an integer")
        }

        guard let nodeIDValue = object["node_id"] else {
            throw ProtocolViolation.protocolError("HELLO node_id is missing")
        }
        guard case .string(let nodeID) = nodeIDValue, Self.isValidNodeID(nodeID) else {
            throw ProtocolViolation.protocolError("HELLO node_id is invalid")
        }

        guard let roleValue = object["role"] else {
            throw ProtocolViolation.protocolError("HELLO role is missing")
        }
        guard case .string(let role) = roleValue, !role.isEmpty else {
            throw ProtocolViolation.protocolError("HELLO role must be a non-empty string")
        }

        var heartbeatMilliseconds: Int? = nil
        if let value = object["heartbeat_ms"] {
            guard case .integer(let milliseconds) = value, milliseconds > 0, let exact = Int(exactly: milliseconds)
            else {
                throw ProtocolViolation.protocolError("HELLO heartbeat_ms must be a positive integer")
            }
            heartbeatMilliseconds = exact
        }

        var maxFrame: Int? = nil
        if let value = object["max_frame"] {
            switch value {
            case .integer(let bytes) where bytes >= Self.minimumMaxFrame:
                // Anything beyond Int is no limit at all: a frame's length is 32 bits.
                maxFrame = Int(exactly: bytes) ?? Int.max
            case .number(let text) where value.isIntegral && !text.hasPrefix("-"):
                // A positive integer too large for Int64.
                maxFrame = Int.max
            default:
                throw ProtocolViolation.protocolError("HELLO max_frame must be an integer of at least 65536")
            }
        }

        var metadata: [String: String] = [:]
        if let value = object["metadata"] {
            guard case .object(let members) = value else {
                throw ProtocolViolation.protocolError("HELLO metadata must map strings to strings")
            }
            metadata.reserveCapacity(members.count)
            for (key, member) in members {
                guard case .string(let string) = member else {
                    throw ProtocolViolation.protocolError("HELLO metadata must map strings to strings")
                }
                metadata[key] = string
            }
        }

        var extensions: [String]? = nil
        if let value = object["extensions"] {
            guard case .array(let elements) = value else {
                throw ProtocolViolation.protocolError("HELLO extensions must be an array of strings")
            }
            var names: [String] = []
            for element in elements {
                guard case .string(let name) = element, ProtocolExtensions.isValidName(name) else {
                    throw ProtocolViolation.protocolError(
                        "HELLO extensions must be names of 1 to 64 characters of a-z 0-9 -"
                    )
                }
                guard !names.contains(name) else {
                    throw ProtocolViolation.protocolError("HELLO extensions lists \(name) twice")
                }
                names.append(name)
            }
            extensions = names
        }

        var sessionID: String? = nil
        if expectSessionID {
            guard let value = object["session_id"] else {
                throw ProtocolViolation.protocolError("HELLO session_id is missing")
            }
            guard case .string(let string) = value, !string.isEmpty else {
                throw ProtocolViolation.protocolError("HELLO session_id must be a non-empty string")
            }
            sessionID = string
        }

        return Hello(
            nodeID: nodeID,
            role: role,
            heartbeatMilliseconds: heartbeatMilliseconds,
            maxFrame: maxFrame,
            metadata: metadata,
            sessionID: sessionID,
            extensions: extensions
        )
    }
}
