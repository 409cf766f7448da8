"""Using a trained run outside training (plain PyTorch, no Dassl).

    predictor      a run's predictor.pt record -> a stand-alone image classifier
    predict        classify images with a run (promptkd predict)
    export_model   one ONNX / TorchScript classifier file, or a model folder (promptkd export)
    hub            model folders in the Hugging Face layout: written, read (from_pretrained)
    push           upload a model folder to the Hugging Face Hub (promptkd push)
    convert        a published PromptKD / PromptSRC checkpoint -> a model folder (promptkd convert)
"""
