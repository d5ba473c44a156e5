// kiln tokenize: stdin text -> token ids on one line, or with --decode, ids -> the raw text.
#include <charconv>
#include <iostream>
#include <iterator>
#include <sstream>

#include "data/tokenizer.h"
#include "tools/cli/commands.h"

namespace kiln::cli {
namespace {

struct TokenizeOptions {
  std::string tokenizer;
  std::string dir;
  bool decode = false;
};

std::string read_stdin() {
  std::ostringstream text;
  text << std::cin.rdbuf();
  return text.str();
}

// Whitespace-separated decimal ids; anything else is an error naming the offending item.
std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::istringstream in(text);
  std::string item;
  while (in >> item) {
    int32_t id = 0;
    const auto [end, error] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (error != std::errc() || end != item.data() + item.size())
      throw std::runtime_error("tokenize --decode: '" + item + "' (item " + std::to_string(ids.size() + 1) +
                               " on stdin) is not a token id");
    ids.push_back(id);
  }
  return ids;
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("tokenize", "Encode stdin to token ids (one line), or decode ids with --decode");
  auto opts = std::make_shared<TokenizeOptions>();
  cmd->add_option("--tokenizer", opts->tokenizer, "bytes or gpt2")->required();
  cmd->add_option("--tokenizer-dir", opts->dir,
                  "gpt2: a directory with encoder.json and vocab.bpe; default: the vocabulary kiln ships");
  cmd->add_flag("--decode", opts->decode, "Read whitespace-separated ids, print the text they decode to");
  cmd->callback([opts] {
    const std::unique_ptr<Tokenizer> tokenizer = make_tokenizer(opts->tokenizer, opts->dir);
    const std::string input = read_stdin();
    if (opts->decode) {
      const std::string text = tokenizer->decode(parse_ids(input));
      std::cout.write(text.data(), static_cast<std::streamsize>(text.size()));
      std::cout.flush();
      return;
    }
    std::string line;
    char digits[16];
    for (int32_t id : tokenizer->encode(input)) {
      if (!line.empty()) line.push_back(' ');
      line.append(digits, std::to_chars(digits, digits + sizeof digits, id).ptr);
    }
    line.push_back('\n');
    std::cout << line << std::flush;
  });
}

}  // namespace kiln::cli
