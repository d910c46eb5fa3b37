package wire

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The gRPC service demo.Echo, written by hand (no protoc): requests are
// google.protobuf.StringValue, replies google.protobuf.Struct with the fields below. Its
// proto would be:
//
//	service Echo {
//	  rpc Hello(google.protobuf.StringValue) returns (google.protobuf.Struct);
//	  rpc Chat(stream google.protobuf.StringValue) returns (stream google.protobuf.Struct);
//	}
const (
	EchoService = "demo.Echo"
	HelloMethod = "/demo.Echo/Hello"
	ChatMethod  = "/demo.Echo/Chat"
)

// Fields of an Echo reply.
const (
	FieldMessage      = "message"      // the request's text, echoed
	FieldSeq          = "seq"          // 1-based number of the message in its Chat stream; 1 for Hello
	FieldService      = "service"      // the server's --service
	FieldVersion      = "version"      // the server's --version
	FieldPod          = "pod"          // $POD_NAME
	FieldNamespace    = "namespace"    // $POD_NAMESPACE
	FieldPeerIdentity = "peerIdentity" // the caller's x-trellis-peer-identity metadata
)

// EchoServer is what the server implements.
type EchoServer interface {
	Hello(ctx context.Context, in *wrapperspb.StringValue) (*structpb.Struct, error)
	Chat(stream grpc.BidiStreamingServer[wrapperspb.StringValue, structpb.Struct]) error
}

// EchoServiceDesc registers an EchoServer: grpc.Server.RegisterService(&EchoServiceDesc, impl).
var EchoServiceDesc = grpc.ServiceDesc{
	ServiceName: EchoService,
	HandlerType: (*EchoServer)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Hello", Handler: helloHandler}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Chat",
		Handler:       chatHandler,
		ServerStreams: true,
		ClientStreams: true,
	}},
	Metadata: "demo/echo.proto",
}

func helloHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(wrapperspb.StringValue)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(EchoServer).Hello(ctx, in)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: HelloMethod}
	return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
		return srv.(EchoServer).Hello(ctx, req.(*wrapperspb.StringValue))
	})
}

func chatHandler(srv any, stream grpc.ServerStream) error {
	return srv.(EchoServer).Chat(&grpc.GenericServerStream[wrapperspb.StringValue, structpb.Struct]{ServerStream: stream})
}

// Hello calls demo.Echo/Hello on cc.
func Hello(ctx context.Context, cc grpc.ClientConnInterface, text string, opts ...grpc.CallOption) (*structpb.Struct, error) {
	out := new(structpb.Struct)
	if err := cc.Invoke(ctx, HelloMethod, wrapperspb.String(text), out, opts...); err != nil {
		return nil, err
	}
	return out, nil
}

// Chat opens a demo.Echo/Chat stream on cc.
func Chat(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (grpc.BidiStreamingClient[wrapperspb.StringValue, structpb.Struct], error) {
	s, err := cc.NewStream(ctx, &EchoServiceDesc.Streams[0], ChatMethod, opts...)
	if err != nil {
		return nil, err
	}
	return &grpc.GenericClientStream[wrapperspb.StringValue, structpb.Struct]{ClientStream: s}, nil
}
