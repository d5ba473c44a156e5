// kiln: one binary, git-style subcommands.
#include <iostream>

#include "tools/cli/commands.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"kiln: pretrain and fine-tune GPT-style transformers", "kiln"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(KILN_VERSION));
  kiln::cli::add_info_command(app);
  kiln::cli::add_train_command(app);
  kiln::cli::add_prepare_command(app);
  kiln::cli::add_tokenize_command(app);
  kiln::cli::add_bench_command(app);
  kiln::cli::add_plan_command(app);
  kiln::cli::add_ckpt_command(app);
  kiln::cli::add_generate_command(app);
  kiln::cli::add_eval_command(app);
  if (argc == 1) {  // a bare `kiln`: what it can do, not a complaint
    std::cout << app.help();
    return 0;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::bad_alloc&) {
    std::cerr << "kiln: error: out of host memory (a request larger than what the machine has free; smaller "
                 "--batch-size or --seq-len, or a smaller model, need less)"
              << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "kiln: error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Setting up the commands can throw too (an allocation); nothing leaves main as an exception.
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "kiln: error: " << e.what() << std::endl;
  } catch (...) {
    std::cerr << "kiln: error: an unknown exception" << std::endl;
  }
  return 1;
}
