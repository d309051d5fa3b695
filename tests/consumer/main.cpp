// Serves one request on a Unix-free loopback TCP port and prints the reply.
#include <cctype>
#include <cstdio>
#include <string>
#include <thread>

#include <socketserver.hpp>

struct Upper : socketserver::StreamRequestHandler<> {
  void handle() {
    std::string line = rfile.readline();
    for (char& c : line) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    wfile.write(line);
  }
};

int main() {
  socketserver::TCPServer<Upper> server({"127.0.0.1", 0});
  std::thread serving([&] { server.handle_request(); });
  socketserver::socket client(AF_INET, SOCK_STREAM);
  if (::connect(client.fileno(), server.server_address.data(), server.server_address.size()) != 0)
    return 1;
  client.sendall("hello\n");
  std::printf("consumer: %s", client.recv(64).c_str());
  serving.join();
  return 0;
}
